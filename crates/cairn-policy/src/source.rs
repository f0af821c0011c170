//! Token-level analysis of Rego sources, done before regorus sees them.
//!
//! regorus' lexer is reused (it knows strings, raw strings and comments), so that nothing inside
//! a string or a comment is ever mistaken for code.

use std::collections::BTreeSet;

use regorus::unstable::{Lexer, Token, TokenKind};
use regorus::{Engine, Source};

use crate::error::{PolicyError, Result};

/// Builtins that reach the network, the process runtime, a clock or a random source. Spacelift
/// disables `http.send`, `opa.runtime`, `rego.parse_module`, `time.now_ns` and `trace`; the rest
/// are the remaining builtins whose result does not depend on the input alone. The pure `net.cidr_*`
/// helpers stay allowed: they are deterministic and common in login/approval policies.
pub const FORBIDDEN_BUILTINS: &[&str] = &[
    "http.send",
    "net.lookup_ip_addr",
    "opa.runtime",
    "rego.parse_module",
    "time.now_ns",
    "trace",
    "rand.intn",
    "uuid.rfc4122",
];

/// Rego keywords that may be followed by `(` without being a call.
const KEYWORDS: &[&str] = &[
    "as", "contains", "default", "else", "every", "false", "if", "import", "in", "not", "null",
    "package", "some", "true", "with",
];

/// Custom builtins this crate registers on every engine.
pub(crate) const EXTENSIONS: &[&str] = &["sanitized"];

#[derive(Debug, Clone)]
pub(crate) struct Tok {
    pub kind: TokenKind,
    pub text: String,
    pub line: u32,
    pub col: u32,
    pub start: usize,
    pub end: usize,
}

impl Tok {
    fn is_symbol(&self, s: &str) -> bool {
        self.kind == TokenKind::Symbol && self.text == s
    }
    fn is_ident(&self, s: &str) -> bool {
        self.kind == TokenKind::Ident && self.text == s
    }
}

pub(crate) fn tokenize(file: &str, body: &str) -> Result<Vec<Tok>> {
    let source = Source::from_contents(file.to_string(), body.to_string())
        .map_err(|e| PolicyError::from_regorus_compile(&e))?;
    let mut lexer = Lexer::new(&source);
    let mut out = Vec::new();
    loop {
        let Token(kind, span) = lexer
            .next_token()
            .map_err(|e| PolicyError::from_regorus_compile(&e))?;
        if kind == TokenKind::Eof {
            break;
        }
        out.push(Tok {
            text: span.text().to_string(),
            kind,
            line: span.line,
            col: span.col,
            start: span.start as usize,
            end: span.end as usize,
        });
    }
    Ok(out)
}

/// A dotted reference such as `http.send` or `input.stack.id`, starting at a token that is not
/// itself preceded by a dot (so `input.http.send` is never seen as `http.send`).
#[derive(Debug)]
pub(crate) struct PathRef {
    pub name: String,
    pub first: usize,
    /// Index of the token right after the path.
    pub next: usize,
}

pub(crate) fn paths(toks: &[Tok]) -> Vec<PathRef> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let starts_path =
            toks[i].kind == TokenKind::Ident && (i == 0 || !toks[i - 1].is_symbol("."));
        if !starts_path {
            i += 1;
            continue;
        }
        let mut name = toks[i].text.clone();
        let mut j = i + 1;
        while j + 1 < toks.len() && toks[j].is_symbol(".") && toks[j + 1].kind == TokenKind::Ident {
            name.push('.');
            name.push_str(&toks[j + 1].text);
            j += 2;
        }
        out.push(PathRef {
            name,
            first: i,
            next: j,
        });
        i = j;
    }
    out
}

fn is_call(toks: &[Tok], p: &PathRef) -> bool {
    toks.get(p.next).is_some_and(|t| t.is_symbol("("))
}

/// Refuses calls to [`FORBIDDEN_BUILTINS`], reporting the first one with its position.
pub(crate) fn check_forbidden_builtins(toks: &[Tok]) -> Result<()> {
    for p in paths(toks) {
        if is_call(toks, &p) && FORBIDDEN_BUILTINS.contains(&p.name.as_str()) {
            let t = &toks[p.first];
            return Err(PolicyError::ForbiddenBuiltin {
                name: p.name,
                line: t.line,
                column: t.col,
            });
        }
    }
    Ok(())
}

/// Refuses calls to functions that are neither builtins, extensions, functions declared in the
/// loaded modules, nor reached through `data`, `input` or an import alias. regorus only notices
/// these when the call is reached during evaluation; a policy must fail when it is saved.
pub(crate) fn check_undefined_functions(
    toks: &[Tok],
    known_functions: &BTreeSet<String>,
    import_aliases: &BTreeSet<String>,
) -> Result<()> {
    for p in paths(toks) {
        if !is_call(toks, &p) {
            continue;
        }
        let first = p.name.split('.').next().unwrap_or_default();
        let known = KEYWORDS.contains(&p.name.as_str())
            || first == "data"
            || first == "input"
            || import_aliases.contains(first)
            || p.name == "print"
            || EXTENSIONS.contains(&p.name.as_str())
            || regorus::unstable::BUILTINS.contains_key(p.name.as_str())
            || known_functions.contains(&p.name);
        if !known {
            let t = &toks[p.first];
            return Err(PolicyError::Compile {
                line: t.line,
                column: t.col,
                message: format!("undefined function `{}`", p.name),
            });
        }
    }
    Ok(())
}

/// Refuses functions that call themselves, directly or through other functions. OPA rejects
/// recursion at compile time; regorus detects recursive *rules* while evaluating but recurses
/// through functions until the stack overflows, which would abort the whole process.
pub(crate) fn check_function_recursion(
    toks: &[Tok],
    module: &regorus::unstable::Module,
    package: &str,
) -> Result<()> {
    use regorus::unstable::{Rule, RuleHead};
    use std::collections::BTreeMap;

    // name -> (position of the head, functions called in the bodies)
    let mut graph: BTreeMap<String, ((u32, u32), BTreeSet<String>)> = BTreeMap::new();
    let mut spans = Vec::new();
    for rule in &module.policy {
        if let Rule::Spec {
            span,
            head: RuleHead::Func { refr, .. },
            ..
        } = rule.as_ref()
        {
            if let Ok(name) = regorus::utils::get_path_string(refr, None) {
                graph.entry(name.clone()).or_default().0 = (span.line, span.col);
                spans.push((name, span.start as usize, span.end as usize));
            }
        }
    }
    let prefix = format!("{package}.");
    let all = paths(toks);
    for (name, start, end) in &spans {
        let calls: BTreeSet<String> = all
            .iter()
            .filter(|p| toks[p.first].start > *start && toks[p.first].start < *end)
            .filter(|p| is_call(toks, p))
            .map(|p| p.name.strip_prefix(&prefix).unwrap_or(&p.name).to_string())
            .filter(|callee| graph.contains_key(callee))
            .collect();
        if let Some(entry) = graph.get_mut(name) {
            entry.1.extend(calls);
        }
    }

    fn visit(
        node: &str,
        graph: &BTreeMap<String, ((u32, u32), BTreeSet<String>)>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for callee in graph.get(node).map(|e| &e.1).into_iter().flatten() {
            if let Some(cycle) = visit(callee, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }

    let mut done = BTreeSet::new();
    for name in graph.keys() {
        if let Some(cycle) = visit(name, &graph, &mut Vec::new(), &mut done) {
            let (line, column) = graph.get(&cycle[0]).map(|e| e.0).unwrap_or((0, 0));
            return Err(PolicyError::Compile {
                line,
                column,
                message: format!("recursive function: {}", cycle.join(" -> ")),
            });
        }
    }
    Ok(())
}

/// Finds the index of the bracket closing the one at `open`, and the indices of the commas
/// directly inside it.
fn matching_close(toks: &[Tok], open: usize) -> Option<(usize, Vec<usize>)> {
    let mut depth = 0usize;
    let mut commas = Vec::new();
    for (i, t) in toks.iter().enumerate().skip(open) {
        if t.kind != TokenKind::Symbol {
            continue;
        }
        match t.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth -= 1;
                if depth == 0 {
                    return Some((i, commas));
                }
            }
            "," if depth == 1 => commas.push(i),
            _ => {}
        }
    }
    None
}

fn apply_edits(body: &str, mut edits: Vec<(usize, usize, String)>) -> String {
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut out = body.to_string();
    for (start, end, text) in edits {
        out.replace_range(start..end, &text);
    }
    out
}

/// Deprecated OPA builtins that Spacelift policies still use (Spacelift runs Rego v0), mapped to
/// the builtin they alias.
const DEPRECATED_ALIASES: &[(&str, &str)] = &[
    ("re_match", "regex.match"),
    ("net.cidr_overlap", "net.cidr_contains"),
];

/// Renames calls to [`DEPRECATED_ALIASES`] to their current names.
pub(crate) fn rewrite_deprecated_aliases(body: &str, toks: &[Tok]) -> String {
    let mut edits = Vec::new();
    for p in paths(toks) {
        if !is_call(toks, &p) {
            continue;
        }
        if let Some((_, new)) = DEPRECATED_ALIASES.iter().find(|(old, _)| *old == p.name) {
            edits.push((toks[p.first].start, toks[p.next - 1].end, new.to_string()));
        }
    }
    apply_edits(body, edits)
}

/// Applies every compatibility rewrite that does not depend on other modules.
pub(crate) fn compat_rewrites(file: &str, body: &str) -> Result<String> {
    let toks = tokenize(file, body)?;
    check_forbidden_builtins(&toks)?;
    let body = rewrite_deprecated_aliases(body, &toks);
    let toks = tokenize(file, &body)?;
    Ok(rewrite_sanitized_out_param(&body, &toks))
}

/// Spacelift documents `sanitized(x, out)` (the OPA out-parameter form); regorus extensions only
/// support `out := sanitized(x)`, so the two-argument form is rewritten to `out = sanitized(x)`.
/// Lines are preserved, so error positions stay right for every line.
pub(crate) fn rewrite_sanitized_out_param(body: &str, toks: &[Tok]) -> String {
    let mut edits = Vec::new();
    for p in paths(toks) {
        if p.name != "sanitized" || !is_call(toks, &p) {
            continue;
        }
        let open = p.next;
        let Some((close, commas)) = matching_close(toks, open) else {
            continue;
        };
        if commas.len() != 1 {
            continue;
        }
        let arg = body[toks[open].end..toks[commas[0]].start].trim();
        let out = body[toks[commas[0]].end..toks[close].start].trim();
        edits.push((
            toks[p.first].start,
            toks[close].end,
            format!("{out} = sanitized({arg})"),
        ));
    }
    apply_edits(body, edits)
}

/// `opa test` accepts `with <rule> as ...` for a rule of the test's own package; regorus only
/// accepts the full `with data.<package>.<rule> as ...`. Rewrites the short form to the full one
/// when the target's first component names a rule of `package_rules`.
pub(crate) fn rewrite_short_with_targets(
    body: &str,
    toks: &[Tok],
    package_path: &str,
    package_rules: &BTreeSet<String>,
) -> String {
    let mut edits = Vec::new();
    for p in paths(toks) {
        let after_with = p.first > 0 && toks[p.first - 1].is_ident("with");
        let before_as = toks.get(p.next).is_some_and(|t| t.is_ident("as"));
        if !after_with || !before_as {
            continue;
        }
        let first = p.name.split('.').next().unwrap_or_default();
        if first == "data" || first == "input" || !package_rules.contains(first) {
            continue;
        }
        let at = toks[p.first].start;
        edits.push((at, at, format!("{package_path}.")));
    }
    apply_edits(body, edits)
}

/// Rego v1 when the module uses the v1-only keywords without importing them; v0 otherwise.
/// A module importing `future.keywords` is a v0 module: there `deny[msg] if { ... }` is a
/// partial set, whereas in v1 the same text is an object rule. Both syntaxes are tried
/// (preferred first), because a v0 policy never needs bare `if`/`contains`.
pub(crate) fn prefers_v1(toks: &[Tok]) -> bool {
    let all = paths(toks);
    let imports_future = all.iter().any(|p| {
        p.first > 0 && toks[p.first - 1].is_ident("import") && p.name.starts_with("future.keywords")
    });
    !imports_future && all.iter().any(|p| p.name == "if" || p.name == "contains")
}

/// Adds a module to `engine`, in the syntax [`prefers_v1`] suggests, falling back to the other.
/// On failure, the preferred syntax's error is reported.
pub(crate) fn add_module(engine: &mut Engine, file: &str, body: &str, toks: &[Tok]) -> Result<()> {
    let order = if prefers_v1(toks) {
        [false, true]
    } else {
        [true, false]
    };
    let mut first_err = None;
    for v0 in order {
        let mut candidate = engine.clone();
        candidate.set_rego_v0(v0);
        match candidate.add_policy(file.to_string(), body.to_string()) {
            Ok(_) => {
                *engine = candidate;
                return Ok(());
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let err = first_err.map_or_else(
        || PolicyError::Evaluation("no syntax tried".to_string()),
        |e| PolicyError::from_regorus_compile(&e),
    );
    Err(err)
}

/// Names declared by the loaded modules: package path (e.g. `data.spacelift`), rule names per
/// package, function names per package, and import aliases per module.
#[derive(Debug, Default, Clone)]
pub(crate) struct ModuleInfo {
    pub package: String,
    pub package_span: (u32, u32),
    pub rules: BTreeSet<String>,
    pub functions: BTreeSet<String>,
    pub import_aliases: BTreeSet<String>,
}

pub(crate) fn module_info(module: &regorus::unstable::Module) -> ModuleInfo {
    use regorus::unstable::{Rule, RuleHead};
    let mut info = ModuleInfo {
        package: regorus::utils::get_path_string(&module.package.refr, Some("data"))
            .unwrap_or_else(|_| "data".to_string()),
        package_span: (module.package.span.line, module.package.span.col),
        ..Default::default()
    };
    for rule in &module.policy {
        let (refr, is_fn) = match rule.as_ref() {
            Rule::Spec { head, .. } => match head {
                RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => (refr, false),
                RuleHead::Func { refr, .. } => (refr, true),
            },
            Rule::Default { refr, args, .. } => (refr, !args.is_empty()),
        };
        let Ok(name) = regorus::utils::get_path_string(refr, None) else {
            continue;
        };
        let root = name.split('.').next().unwrap_or_default().to_string();
        if is_fn {
            info.functions.insert(name);
        }
        info.rules.insert(root);
    }
    for import in &module.imports {
        let alias = match &import.r#as {
            Some(span) => Some(span.text().to_string()),
            None => regorus::utils::get_path_string(&import.refr, None)
                .ok()
                .and_then(|p| p.rsplit('.').next().map(str::to_string)),
        };
        if let Some(alias) = alias {
            info.import_aliases.insert(alias);
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(body: &str) -> Vec<Tok> {
        tokenize("t.rego", body).expect("tokenize")
    }

    #[test]
    fn finds_forbidden_builtin_with_position() {
        let body = "package spacelift\n\nallow {\n  r := http.send({\"url\": \"x\"})\n}\n";
        match check_forbidden_builtins(&toks(body)) {
            Err(PolicyError::ForbiddenBuiltin { name, line, column }) => {
                assert_eq!(name, "http.send");
                assert_eq!((line, column), (4, 8));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ignores_forbidden_names_in_strings_comments_and_fields() {
        let body =
            "package spacelift\n# http.send(x)\nx := \"http.send(1)\"\ny := input.http.send\n";
        assert!(check_forbidden_builtins(&toks(body)).is_ok());
    }

    #[test]
    fn rewrites_deprecated_aliases() {
        let body = "x { re_match(`^a$`, input.a) }\ny := input.re_match\n";
        let out = rewrite_deprecated_aliases(body, &toks(body));
        assert_eq!(
            out,
            "x { regex.match(`^a$`, input.a) }\ny := input.re_match\n"
        );
    }

    #[test]
    fn rewrites_sanitized_out_param() {
        let body = "s := {c | sanitized(xs[_], c)}\nt := sanitized(\"a\")\n";
        let out = rewrite_sanitized_out_param(body, &toks(body));
        assert_eq!(
            out,
            "s := {c | c = sanitized(xs[_])}\nt := sanitized(\"a\")\n"
        );
    }

    #[test]
    fn rewrites_short_with_targets_only_for_package_rules() {
        let body = "test_a { deny == {\"y\"} with deny as {\"y\"} with input as {} with data.spacelift.warn as {} with count as 1 }";
        let rules: BTreeSet<String> = ["deny".to_string(), "warn".to_string()].into();
        let out = rewrite_short_with_targets(body, &toks(body), "data.spacelift", &rules);
        assert_eq!(
            out,
            "test_a { deny == {\"y\"} with data.spacelift.deny as {\"y\"} with input as {} with data.spacelift.warn as {} with count as 1 }"
        );
    }

    #[test]
    fn syntax_preference_follows_v1_keywords() {
        assert!(prefers_v1(&toks("deny contains \"x\" if { true }")));
        assert!(!prefers_v1(&toks("deny[\"x\"] { input.if.contains }")));
        assert!(!prefers_v1(&toks(
            "import future.keywords.if\ndeny[\"x\"] if { true }"
        )));
    }
}

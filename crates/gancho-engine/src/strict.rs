//! What `gancho check` finds in a rule's code that compiles but would fail when it runs: a
//! variable never defined (rhai's strict variables mode, with the names a rule's code sees
//! without defining them: `event` and the file's literal top-level constants), a call to a
//! function that is neither gancho's, nor rhai's, nor the file's, and a timer or expectation
//! whose callback is not a function of the file with one parameter. Read from the compiled
//! AST (rhai's `internals`), never from the text; used only by the check, never at load: a
//! rule the daemon runs today keeps running.

use std::collections::HashSet;
use std::path::Path;

use rhai::{ASTNode, Expr, Position, Stmt};

use crate::rule::{Diagnostic, Rule};

/// Functions rhai handles itself, registered nowhere.
const KEYWORD_FUNCTIONS: &[&str] = &[
    "print",
    "debug",
    "type_of",
    "eval",
    "Fn",
    "call",
    "curry",
    "is_shared",
    "is_def_var",
    "is_def_fn",
];

/// The calls whose last string argument names a callback: `after(name, delay, callback[,
/// data])` (third) and `expect(type, keys, window, callback)` (fourth).
const CALLBACK_ARGUMENT: &[(&str, usize)] = &[("after", 2), ("expect", 3)];

pub(crate) fn check(
    engine: &rhai::Engine,
    path: &Path,
    text: &str,
    rule: &Rule,
) -> Vec<Diagnostic> {
    let at = |pos: Position, message: String| Diagnostic {
        file: path.to_owned(),
        line: pos.line().unwrap_or(1),
        column: pos.position().unwrap_or(1),
        message,
    };
    let mut found = Vec::new();
    if let Err((pos, err)) = strict_compile(text, rule) {
        let mut message = err.to_string();
        if let rhai::ParseErrorType::VariableUndefined(name) = &err
            && (name == "event" || text.contains(&format!("let {name}")))
        {
            message.push_str(
                " (a function sees the file's constants, but not its variables nor `event`: pass them as arguments)",
            );
        }
        found.push(at(pos, message));
    }
    let mut known = known_functions(engine);
    known.extend(rule.ast.iter_functions().map(|f| f.name.to_owned()));
    let mut seen = HashSet::new();
    rule.ast.walk(&mut |path: &[ASTNode]| {
        let (call, pos, method) = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, pos)))
            | Some(ASTNode::Stmt(Stmt::FnCall(call, pos))) => (call, *pos, false),
            Some(ASTNode::Expr(Expr::MethodCall(call, pos))) => (call, *pos, true),
            _ => return true,
        };
        let name = call.name.as_str();
        // Operators (`+`, `==`) are calls too.
        let is_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_');
        if is_name && !known.contains(name) && seen.insert((name.to_owned(), pos)) {
            found.push(at(
                pos,
                format!(
                    "no function {name}{}: not gancho's, nor rhai's, nor defined in this file",
                    if method { " (called as a method)" } else { "" }
                ),
            ));
        }
        if !method
            && let Some(&(_, index)) = CALLBACK_ARGUMENT.iter().find(|(n, _)| *n == name)
            && let Some(Expr::StringConstant(callback, _)) = call.args.get(index)
            && !rule.callbacks.contains(callback.as_str())
        {
            let defined = rule.ast.iter_functions().find(|f| f.name == callback.as_str());
            found.push(at(
                pos,
                match defined {
                    Some(f) => format!(
                        "{name}: the callback {callback} takes {} parameters; it is called with one",
                        f.params.len()
                    ),
                    None => format!(
                        "{name}: no function {callback}(x) in this file to call back"
                    ),
                },
            ));
        }
        true
    });
    found.sort_by_key(|d| (d.line, d.column));
    found
}

/// The functions a rule may call without defining them: rhai's (those of the `sandbox`
/// engine given, its packages included), its keywords, and gancho's.
pub(crate) fn known_functions(sandbox: &rhai::Engine) -> HashSet<String> {
    let mut known: HashSet<String> = sandbox
        .collect_fn_metadata(None, |info| Some(info.metadata.name.to_string()), true)
        .into_iter()
        .collect();
    known.extend(KEYWORD_FUNCTIONS.iter().map(|s| (*s).to_owned()));
    known.extend(crate::api::FUNCTIONS.iter().map(|s| (*s).to_owned()));
    known
}

/// Compiles the rule again in strict variables mode, with the names its code may read
/// without defining them: `event` at its top level (declared before its first line, on that
/// line), the literal top-level constants in its functions too (as the engine resolves
/// them). Errs with where, in the file's own lines and columns.
fn strict_compile(text: &str, rule: &Rule) -> Result<(), (Position, rhai::ParseErrorType)> {
    const EVENT: &str = "const event = (); ";
    let mut engine = rhai::Engine::new_raw();
    engine.set_strict_variables(true);
    engine.set_optimization_level(rhai::OptimizationLevel::None);
    engine.set_max_expr_depths(0, 0);
    let mut scope = rhai::Scope::new();
    for (name, _) in rule.constants.iter() {
        scope.push_constant(name.as_str(), ());
    }
    match engine.compile_with_scope(&scope, format!("{EVENT}{text}")) {
        Ok(_) => Ok(()),
        Err(err) => {
            let pos = err.position();
            let pos = match (pos.line(), pos.position()) {
                (Some(1), Some(column)) => Position::new(
                    1,
                    u16::try_from(column.saturating_sub(EVENT.len()).max(1)).unwrap_or(1),
                ),
                _ => pos,
            };
            Err((pos, *err.0))
        }
    }
}

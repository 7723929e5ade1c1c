//! The sandbox rules run in: rhai's limits (operations, depth, sizes), no `eval`, print and
//! debug to the log, and a wall-time limit per run. `no_module` and `no_time` are compiled in
//! (`Cargo.toml`), so no script reads a file or the clock.

use std::cell::RefCell;
use std::rc::Rc;

use rhai::{Array, Dynamic, Map};

use crate::ctx::Ctx;
use crate::dynamic::MAX_DEPTH;

/// Limits of the sandbox. A rule that passes one is stopped for that event.
#[derive(Debug, Clone)]
pub struct Limits {
    /// rhai operations per run (an infinite loop stops here).
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_expr_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// Window queries per run.
    pub max_queries: u32,
    /// Wall time per run. rhai checks the sizes of a value after each operation by walking
    /// all of it, so a rule that grows a value step by step costs the square of its size
    /// (a nest 100,000 deep: some 5e9 steps) in what counts as few operations.
    pub max_run_time: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_size: 1 << 20,
            max_array_size: 100_000,
            max_map_size: 50_000,
            max_queries: 1_000,
            max_run_time: std::time::Duration::from_secs(1),
        }
    }
}

/// A rhai engine with the sandbox's limits and no host functions: what `gancho check` compiles
/// with, so compile errors are the same as in the daemon.
pub(crate) fn sandbox(limits: &Limits) -> rhai::Engine {
    let mut engine = rhai::Engine::new();
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_levels)
        .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth / 2)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_functions(256)
        .set_max_variables(1024)
        .set_fail_on_invalid_map_property(false);
    engine.disable_symbol("eval");
    engine.on_print(|text| tracing::info!(target: "gancho::rule", "{text}"));
    engine.on_debug(|text, _, pos| tracing::debug!(target: "gancho::rule", %pos, "{text}"));
    engine
}

/// Stops a run of `engine` once it has taken longer than `limits.max_run_time` (checked every
/// 1,024 operations, between them: rhai's own size checks run inside one).
pub(crate) fn watch_run_time(engine: &mut rhai::Engine, limits: &Limits, ctx: &Rc<RefCell<Ctx>>) {
    let max_run_time = limits.max_run_time;
    let watched = Rc::clone(ctx);
    engine.on_progress(move |ops| {
        if ops % 1024 != 0 {
            return None;
        }
        let ctx = watched.try_borrow().ok()?;
        let started = ctx.run.as_ref()?.started;
        (started.elapsed() > max_run_time).then(|| {
            Dynamic::from(format!(
                "the run took longer than {}",
                humantime::format_duration(max_run_time)
            ))
        })
    });
}

/// rhai's variable resolver, which runs before every read of a variable, does two things:
///
/// - A value that nests deeper than [`MAX_DEPTH`] levels (arrays and maps within each other,
///   the limit of stored values) is an error of the run at the next read of the variable that
///   holds it: a value grows deeper only by being read (`a = [a]`, `a.push(a)`), and within one
///   expression by at most the expression depth limit. rhai has no hook on the values it
///   builds. The `event` constant is not checked: it comes from a payload, whose depth the
///   adapters limit (a `let event` shadowing it is).
/// - A name that is no variable where it is read, but one of the rule's top-level constants
///   with a literal value, reads that constant: rhai's functions see no outer variable, so
///   `const HOOK = "…"; fn thanks(t) { http(#{ url: HOOK }) }` failed when the timer fired.
pub(crate) fn resolve_variables(engine: &mut rhai::Engine, ctx: &Rc<RefCell<Ctx>>) {
    let watched = Rc::clone(ctx);
    // `on_var` is marked deprecated to say its signature may change, not that it goes.
    #[allow(deprecated)]
    engine.on_var(move |name, _, context| {
        let scope = context.scope();
        let Some(value) = scope.get(name) else {
            let Ok(ctx) = watched.try_borrow() else {
                return Ok(None);
            };
            let constant = ctx.run.as_ref().and_then(|run| {
                run.constants
                    .iter()
                    .find(|(constant, _)| constant == name)
                    .map(|(_, value)| value.clone())
            });
            return Ok(constant);
        };
        if name == "event" && scope.is_constant(name) == Some(true) {
            return Ok(None);
        }
        if nests_deeper(value, MAX_DEPTH) {
            return Err(format!(
                "{name} nests deeper than {MAX_DEPTH} levels (arrays and maps within each other)"
            )
            .into());
        }
        Ok(None)
    });
}

/// Whether `value` holds more than `levels` levels of arrays and maps.
fn nests_deeper(value: &Dynamic, levels: usize) -> bool {
    if value.is_array() {
        let Some(array) = value.read_lock::<Array>() else {
            return false;
        };
        return levels == 0 || array.iter().any(|v| nests_deeper(v, levels - 1));
    }
    if value.is_map() {
        let Some(map) = value.read_lock::<Map>() else {
            return false;
        };
        return levels == 0 || map.values().any(|v| nests_deeper(v, levels - 1));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nest(levels: usize) -> Dynamic {
        let mut value = Dynamic::from_array(Array::new());
        for i in 1..levels {
            value = match i % 2 {
                0 => Dynamic::from_array(vec![value]),
                _ => {
                    let mut map = Map::new();
                    map.insert("x".into(), value);
                    Dynamic::from_map(map)
                }
            };
        }
        value
    }

    #[test]
    fn nesting_is_counted_through_arrays_and_maps() {
        assert!(!nests_deeper(&Dynamic::from_int(1), 0));
        assert!(!nests_deeper(&nest(64), 64));
        assert!(nests_deeper(&nest(65), 64));
        let wide = Dynamic::from_array((0..1000).map(Dynamic::from_int).collect());
        assert!(!nests_deeper(&wide, 1));
    }
}

//! The snippet the manager runs inside a provider (through the agent's `run-ts` or
//! `run-python`) to call one export with validated arguments. The value reaches the manager as
//! the run's structured `result`.

use serde_json::Value;

use crate::manifest::{Export, ModuleLanguage};

/// Workspace root inside every guest.
const WORKSPACE: &str = "/workspace";

/// Source code that imports the export's module, calls its function with `args` and reports the
/// returned value (awaited if asynchronous) as the run's result.
pub fn invocation_source(export: &Export, args: &Value) -> String {
    let module = format!("{WORKSPACE}/{}", export.module);
    let args_json = args.to_string();
    let function = export.function();
    // Original-shape exports take their arguments positionally, in declared order.
    let (ts_call, py_call) = match &export.positional {
        Some(names) => {
            let names = serde_json::to_string(names).expect("strings serialise");
            (format!("...{names}.map((n) => __args[n])"), format!("*[_args[n] for n in {names}]"))
        }
        None => ("__args".to_string(), "_args".to_string()),
    };
    match export.language() {
        ModuleLanguage::Deno => format!(
            "const mod = await import({url});\n\
             const fn = mod[{function:?}];\n\
             if (typeof fn !== \"function\") {{\n\
             \x20 throw new TypeError({not_callable});\n\
             }}\n\
             const __args = {args_json};\n\
             const value = await fn({ts_call});\n\
             result.set(value === undefined ? null : value);\n",
            url = serde_json::to_string(&format!("file://{module}")).expect("string serialises"),
            not_callable = serde_json::to_string(&format!("{function} in {module} is not a function")).expect("string"),
        ),
        ModuleLanguage::Python => format!(
            "import asyncio, importlib.util, json, os, sys\n\
             _path = {path}\n\
             sys.path.insert(0, os.path.dirname(_path))\n\
             _spec = importlib.util.spec_from_file_location('rds_provider_module', _path)\n\
             _mod = importlib.util.module_from_spec(_spec)\n\
             _spec.loader.exec_module(_mod)\n\
             _fn = getattr(_mod, {function:?}, None)\n\
             if not callable(_fn):\n\
             \x20   raise TypeError({not_callable})\n\
             _args = json.loads({args_literal})\n\
             result = _fn({py_call})\n\
             if asyncio.iscoroutine(result):\n\
             \x20   result = asyncio.run(result)\n",
            path = serde_json::to_string(&module).expect("string serialises"),
            not_callable = serde_json::to_string(&format!("{function} in {module} is not a function")).expect("string"),
            // A JSON string literal is also a valid Python string literal.
            args_literal = serde_json::to_string(&args_json).expect("string serialises"),
        ),
    }
}

/// Source code that imports `module` (relative to the workspace) and reports, as the run's
/// result, which of `functions` it does not export as callables (an empty list when all are).
/// The module is resolved from the run's working directory, which is the workspace for a snippet.
pub fn inspection_source(module: &str, language: ModuleLanguage, functions: &[&str]) -> String {
    let names = serde_json::to_string(functions).expect("strings serialise");
    let module_lit = serde_json::to_string(module).expect("string serialises");
    match language {
        ModuleLanguage::Deno => format!(
            "const mod = await import(new URL({module_lit}, \"file://\" + Deno.cwd() + \"/\").href);\n\
             result.set({names}.filter((n) => typeof mod[n] !== \"function\"));\n",
        ),
        ModuleLanguage::Python => format!(
            "import importlib.util, json, os, sys\n\
             _path = os.path.join(os.getcwd(), {module_lit})\n\
             sys.path.insert(0, os.path.dirname(_path))\n\
             _spec = importlib.util.spec_from_file_location('rds_provider_module', _path)\n\
             _mod = importlib.util.module_from_spec(_spec)\n\
             _spec.loader.exec_module(_mod)\n\
             result = [n for n in json.loads({names_literal}) if not callable(getattr(_mod, n, None))]\n",
            names_literal = serde_json::to_string(&names).expect("string serialises"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn export(module: &str) -> Export {
        Export {
            name: "forecast".into(),
            module: module.into(),
            function: None,
            description: "d".into(),
            args: json!({}),
            returns: json!({}),
            timeout_ms: None,
            positional: None,
        }
    }

    #[test]
    fn deno_snippet_imports_module_and_embeds_args_as_data() {
        let src = invocation_source(&export("src/w.ts"), &json!({"city": "Pa\"ris</script>\u{2028}"}));
        assert!(src.contains("import(\"file:///workspace/src/w.ts\")"));
        assert!(src.contains(r#"const __args = {"city":"Pa\"ris</script>"#));
        assert!(src.contains("await fn(__args)"));
        assert!(src.contains("result.set("));
    }

    #[test]
    fn python_snippet_decodes_args_from_a_string_literal() {
        let src = invocation_source(&export("lib/tools.py"), &json!({"q": "it's \"quoted\"\n"}));
        assert!(src.contains("_path = \"/workspace/lib/tools.py\""));
        assert!(src.contains(r#"json.loads("{\"q\":\"it's \\\"quoted\\\"\\n\"}")"#), "{src}");
    }

    #[test]
    fn positional_exports_spread_arguments_in_declared_order() {
        let mut e = export("src/w.ts");
        e.positional = Some(vec!["b".into(), "a".into()]);
        let src = invocation_source(&e, &json!({"a": 1, "b": 2}));
        assert!(src.contains(r#"await fn(...["b","a"].map((n) => __args[n]))"#), "{src}");
        let mut e = export("m.py");
        e.positional = Some(vec!["b".into(), "a".into()]);
        let src = invocation_source(&e, &json!({"a": 1, "b": 2}));
        assert!(src.contains(r#"_fn(*[_args[n] for n in ["b","a"]])"#), "{src}");
    }

    #[test]
    fn python_inspection_lists_what_is_not_callable() {
        if std::process::Command::new("python3").arg("--version").output().is_err() {
            rds_testkit::skip("python3 not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.py"), "def f(a):\n    return a\nVALUE = 3\n").unwrap();
        let src = inspection_source("m.py", ModuleLanguage::Python, &["f", "VALUE", "missing"]);
        let script = format!("{src}\nimport json as _j\nprint(_j.dumps(result))\n");
        let out = std::process::Command::new("python3").arg("-c").arg(script).current_dir(dir.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got, json!(["VALUE", "missing"]));
    }

    #[test]
    fn python_snippet_round_trips_arguments_through_python() {
        if std::process::Command::new("python3").arg("--version").output().is_err() {
            rds_testkit::skip("python3 not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let args = json!({"q": "it's \"quoted\"\n", "n": [1, 2.5, null], "u": "é"});
        let src = invocation_source(&export("m.py"), &args).replace("/workspace", dir.path().to_str().unwrap());
        std::fs::write(dir.path().join("m.py"), "def forecast(a):\n    return a\n").unwrap();
        let script = format!("{src}\nimport json as _j\nprint(_j.dumps(result))\n");
        let out = std::process::Command::new("python3").arg("-c").arg(script).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got, args);
    }
}

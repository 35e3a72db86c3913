//! Each command's `--help` says what its `--json` prints: every key of the
//! document a command prints (of its first element, for an array) is named
//! in that command's help, so that help and output cannot drift apart.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use common::{Config, Daemon, umbra_cmd};

fn help(command: &str) -> String {
    let out = umbra_cmd().args([command, "--help"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn keys(doc: &serde_json::Value) -> Vec<String> {
    let object = match doc {
        serde_json::Value::Array(items) => items.first().cloned().unwrap_or_default(),
        other => other.clone(),
    };
    object
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn every_key_a_command_prints_is_named_in_its_help() {
    let d = Daemon::start(Config::empty().volume("data").line("max_sets = 9"));
    std::fs::write(d.live("data").join("f"), "one").unwrap();
    let set = d.create_set();
    std::fs::write(d.live("data").join("f"), "two").unwrap();
    let f = d.live("data").join("f");
    let commands: Vec<(&str, Vec<&str>)> = vec![
        ("create", vec!["create", "--json"]),
        ("list", vec!["list", "--json"]),
        ("status", vec!["status", "--json"]),
        ("writers", vec!["writers", "--json"]),
        ("diff", vec!["diff", &set.name, "--json"]),
        ("versions", vec!["versions", f.to_str().unwrap(), "--json"]),
        (
            "restore",
            vec!["restore", &set.name, "data/f", "--dry-run", "--json"],
        ),
        ("delete", vec!["delete", &set.name, "--json"]),
    ];
    for (name, args) in commands {
        let out = d.umbra_ok(&args);
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        let text = help(name);
        for key in keys(&doc) {
            assert!(
                text.contains(&key),
                "`umbra {name} --json` prints {key:?}, which `umbra {name} --help` does not name"
            );
        }
    }
}

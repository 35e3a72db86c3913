//! `umbra completions SHELL` prints a completion script made from the same
//! clap definitions as `--help`: bash really completes with it, and every
//! shell's script knows every command.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::process::Command;

const COMMANDS: [&str; 8] = [
    "up",
    "create",
    "list",
    "delete",
    "status",
    "writers",
    "backup",
    "completions",
];

fn script(shell: &str) -> String {
    let out = common::umbra_cmd()
        .args(["completions", shell])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What bash offers after `umbra <words>` with the generated script loaded.
fn bash_offers(words: &str) -> Vec<String> {
    let program = format!(
        "{}\nCOMP_WORDS=(umbra {words}); COMP_CWORD=${{#COMP_WORDS[@]}}; COMP_WORDS+=(''); \
         COMP_LINE=\"umbra {words} \"; COMP_POINT=${{#COMP_LINE}}; _umbra umbra '' '{last}'; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script("bash"),
        last = words.split_whitespace().last().unwrap_or("umbra"),
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(program)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_commands_and_their_options() {
    let top = bash_offers("");
    for command in COMMANDS {
        assert!(top.iter().any(|w| w == command), "{command} in {top:?}");
    }
    let create = bash_offers("create");
    for flag in ["--label", "--json"] {
        assert!(create.iter().any(|w| w == flag), "{flag} in {create:?}");
    }
    let shells = bash_offers("completions");
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.iter().any(|w| w == shell), "{shell} in {shells:?}");
    }
}

#[test]
fn every_shells_script_knows_every_command() {
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let text = script(shell);
        for command in COMMANDS {
            assert!(text.contains(command), "{shell}: {command}");
        }
    }
}

#[test]
fn an_unknown_shell_is_refused() {
    let out = common::umbra_cmd()
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcsh"));
}

//! The command line: `info` tables and JSON, and refusals of impossible options (exit code 2,
//! a message that says what is wrong).

mod common;
use common::{advcomp, assert_refused};

use std::process::Output;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An option or argument line of clap's help: `  -h, --help`, `      --step <STEP>`, `  <SHELL>`,
/// and the text after it on the same line.
fn help_entry(line: &str) -> Option<(&str, &str)> {
    let indent = line.len() - line.trim_start().len();
    let rest = line.trim_start();
    if !(2..=6).contains(&indent) || !(rest.starts_with('-') || rest.starts_with('<')) {
        return None;
    }
    // The flag and its value name end where two spaces begin the help text.
    Some(match rest.find("  ") {
        Some(i) => (&rest[..i], rest[i..].trim()),
        None => (rest, ""),
    })
}

/// Every option and argument of every command says what it is for (on its line, or on the
/// lines under it).
#[test]
fn every_option_of_every_command_has_help() {
    let top = String::from_utf8_lossy(&advcomp(&["--help"]).stdout).into_owned();
    let commands: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 10, "{top}");
    let mut missing = Vec::new();
    for command in &commands {
        let help = String::from_utf8_lossy(&advcomp(&[command, "--help"]).stdout).into_owned();
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some((flag, text)) = help_entry(line) else {
                continue;
            };
            // `[default: 256]` alone is not help.
            let says = |text: &str| !text.is_empty() && !text.starts_with('[');
            let below = lines.get(i + 1).is_some_and(|next| {
                next.len() - next.trim_start().len() >= 8
                    && help_entry(next).is_none()
                    && says(next.trim())
            });
            if !says(text) && !below {
                missing.push(format!("{command} {flag}"));
            }
        }
    }
    assert!(missing.is_empty(), "no help text: {missing:?}");
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_advcomp()"),
        ("zsh", "#compdef advcomp"),
        ("fish", "complete -c advcomp"),
    ] {
        let out = advcomp(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}");
        // Subcommands and their flags are completed.
        assert!(
            script.contains("transfer") && script.contains("--budget"),
            "{shell}"
        );
    }
    let out = advcomp(&["completions", "tcsh"]);
    assert_refused(&out, "completions tcsh", &[]);
}

#[test]
fn info_reports_real_parameter_counts_as_json_and_table() {
    for (model, count) in [("lenet5", 431_080), ("cifarnet", 1_296_074)] {
        let out = advcomp(&["info", "--model", model, "--backend", "cpu", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["parameters"], count, "{model}");
        assert_eq!(
            json["adapter"].as_str().map(|a| a.starts_with("Flex")),
            Some(true)
        );
    }
    let out = advcomp(&["info", "--model", "lenet5", "--backend", "cpu"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("fc1") && table.contains("400500") && table.contains("parameters: 431080"),
        "{table}"
    );
    assert!(stderr(&out).contains("backend: cpu on Flex"));
}

#[test]
fn impossible_options_are_refused_with_exit_code_2() {
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "train",
                "--model",
                "cifarnet",
                "--dataset",
                "mnist",
                "--backend",
                "cpu",
            ],
            "takes [3, 32, 32] images",
        ),
        (
            &[
                "train",
                "--dataset",
                "cifar10",
                "--model",
                "cifarnet",
                "--backend",
                "cpu",
            ],
            "--data-dir",
        ),
        (
            &["train", "--epochs", "0", "--backend", "cpu"],
            "--epochs: must be between 1 and",
        ),
        (&["info", "--backend", "tpu"], "unknown backend 'tpu'"),
        (
            &[
                "eval",
                "--checkpoint",
                "x.safetensors",
                "--map",
                "justaname",
            ],
            "old=new",
        ),
    ];
    for (args, message) in cases {
        assert_refused(&advcomp(args), &format!("{args:?}"), &[message]);
    }
}

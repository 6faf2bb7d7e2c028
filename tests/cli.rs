//! The command line: `info` tables and JSON, and refusals of impossible options (exit code 2,
//! a message that says what is wrong).

use std::process::{Command, Output};

fn advcomp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_advcomp"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
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
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
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
        let out = advcomp(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
}

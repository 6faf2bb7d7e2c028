//! The sweep as a user runs it (the `advcomp sweep` binary on a tiny preset): every result
//! file and figure is written; killing it at random moments and rerunning gives exactly the
//! results of an uninterrupted run; a second sweep on the same folder is refused; bad configs
//! are refused by name.

mod common;
use common::Scratch;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::sweep_results as results;
use common::{TINY, tiny_sweep as sweep};

fn out_dir(name: &str) -> Scratch {
    Scratch::path(&format!("sweep-{name}"))
}

/// `advcomp sweep` on the cpu with a config file of the test's own.
fn sweep_with(config: &Path, out: &Path) -> Output {
    common::command()
        .args(["sweep", "--backend", "cpu", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn run(out: &Path) -> Output {
    let output = sweep(out).output().unwrap();
    assert!(
        output.status.success(),
        "sweep failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn spawn(out: &Path) -> Child {
    sweep(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(temporaries(&path));
        } else if entry.file_name().to_string_lossy().contains(".tmp-") {
            found.push(path);
        }
    }
    found
}

#[test]
fn killed_and_resumed_sweeps_give_the_results_of_an_uninterrupted_one() {
    let whole = out_dir("whole");
    let start = Instant::now();
    run(&whole);
    let seconds = start.elapsed().as_secs_f64();

    // Every result file, figure and the report.
    for file in [
        "cells.csv",
        "cells.jsonl",
        "models.csv",
        "eps-steps.csv",
        "cdf.csv",
        "throughput.csv",
        "report.md",
        "report.html",
        "sweep.log",
    ] {
        assert!(whole.join(file).is_file(), "{file} missing");
    }
    let figures = [
        "fig2-density",
        "fig3-eps-steps",
        "fig4-bits",
        // Q(W,P) beside the affine int8 per-channel model.
        "fig4b-schemes",
        "fig5-cdf",
        "fig6-perturbation",
        "matrix-ifgsm",
        "matrix-ifgm",
        "matrix-deepfool",
        // Each gradient attack through BPDA, `auto` at each budget, the worst case.
        "matrix-ifgsm-bpda",
        "matrix-ifgm-bpda",
        "matrix-deepfool-bpda",
        "matrix-auto-0.1",
        "matrix-auto-0.3",
        "matrix-worst-case",
    ];
    let report = std::fs::read_to_string(whole.join("report.md")).unwrap();
    let html = std::fs::read_to_string(whole.join("report.html")).unwrap();
    for stem in figures {
        let png = std::fs::read(whole.join("figures").join(format!("{stem}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{stem}.png is a PNG");
        assert!(png.len() > 10_000, "{stem}.png has content");
        let svg = std::fs::read_to_string(whole.join("figures").join(format!("{stem}.svg")));
        assert!(svg.unwrap().contains("<svg"), "{stem}.svg");
        assert!(
            report.contains(&format!("figures/{stem}.png")),
            "report shows {stem}"
        );
    }
    assert_eq!(
        html.matches("<svg").count(),
        figures.len(),
        "figures inline"
    );
    assert!(
        !html.contains("src=\""),
        "the page loads nothing from outside"
    );
    // The report opens with its provenance and the summary, before the figures and tables.
    let at = |heading: &str| report.find(heading).unwrap_or_else(|| panic!("{heading}"));
    let version = format!("| written by | advcomp {} (", env!("CARGO_PKG_VERSION"));
    assert!(at(&version) < at("## Summary"));
    assert!(at("## Summary") < at("## Figures") && at("## Figures") < at("## Models"));
    // Every claim has a verdict, and the two claims that read the same cells in opposite
    // directions are said to.
    let verdicts = [
        "| supported |",
        "| not supported |",
        "| partly supported |",
        "| inconclusive (within the 95% intervals) |",
        "| not testable here |",
    ];
    for id in ["4.1 (1)", "4.1 (4)", "4.2 (1)", "4.2 (4)"] {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {id} |")))
            .unwrap_or_else(|| panic!("claim {id}"));
        assert!(verdicts.iter().any(|v| row.contains(v)), "{row}");
    }
    assert!(report.contains("Claims 4.1 (1) and 4.1 (4) of Section 4.1 read the same cells"));
    assert!(
        report.contains("```toml\nmodel = \"lenet5\""),
        "the config as TOML"
    );
    assert!(html.contains("<nav>") && html.contains("href=\"#summary\""));
    // 6 models x 6 models x (3 attacks + `auto` at 2 budgets), and the 3 quantised sources
    // (q8, q4, int8-pc) x 6 targets x 3 attacks through BPDA; Figure 3: 2 sources (the
    // baseline and dns0.1) x 2 attacks x 2 eps x 2 step counts.
    let cells = std::fs::read_to_string(whole.join("cells.csv")).unwrap();
    assert_eq!(cells.lines().count(), 1 + 180 + 54);
    // Each compressed model on itself: 5 x (3 + 2), and the 3 quantised ones through BPDA.
    assert_eq!(cells.matches(",1,1 COMP->COMP,").count(), 25 + 9);
    let eps_steps = std::fs::read_to_string(whole.join("eps-steps.csv")).unwrap();
    assert_eq!(eps_steps.lines().count(), 1 + 16);
    assert_eq!(eps_steps.matches(",dns0.1,").count(), 8, "{eps_steps}");
    // models.csv: paths relative to the output folder and each checkpoint's SHA-256, which
    // every cell names for its source and target.
    let models = std::fs::read_to_string(whole.join("models.csv")).unwrap();
    let mut hashes = std::collections::BTreeMap::new();
    for row in models.lines().skip(1) {
        let fields: Vec<&str> = row.split(',').collect();
        let (label, path, sha) = (fields[1], fields[7], fields[8]);
        assert!(
            path.starts_with("models/") && whole.join(path).is_file(),
            "{row}"
        );
        let bytes = std::fs::read(whole.join(path)).unwrap();
        assert_eq!(sha, advcomp::files::sha256_hex(&bytes), "{row}");
        hashes.insert(label.to_string(), sha.to_string());
    }
    let header: Vec<&str> = cells.lines().next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for row in cells.lines().skip(1) {
        // The last column, the attack's settings as JSON, is the only quoted one.
        let (plain, settings) = row.split_once(",\"{").unwrap();
        let fields: Vec<&str> = plain.split(',').collect();
        assert_eq!(fields.len(), header.len() - 1, "{row}");
        assert!(settings.contains("\"\"attack\"\":"), "{row}");
        for side in ["source", "target"] {
            let label = fields[column(side)];
            assert_eq!(
                fields[column(&format!("{side}_sha256"))],
                hashes[label],
                "{row}"
            );
        }
        let scenario = fields[column("scenario")];
        assert!(["0", "1", "2", "3"].contains(&scenario), "{row}");
        if fields[column("attack")] == "ifgsm" {
            // The tiny preset: 4 steps of 0.02, no budget.
            assert_eq!(fields[column("step")], "0.02", "{row}");
            assert_eq!(fields[column("linf_reach")], "0.08", "{row}");
        }
    }

    // Kill the same sweep at random moments, then let it finish.
    let seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = StdRng::seed_from_u64(seed);
    let resumed = out_dir("resumed");
    let mut kills = Vec::new();
    for _ in 0..4 {
        let delay = rng.random_range(0.3..(0.8 * seconds).max(0.6));
        let mut child = spawn(&resumed);
        std::thread::sleep(Duration::from_secs_f64(delay));
        child.kill().unwrap(); // SIGKILL: no chance to clean up
        child.wait().unwrap();
        kills.push(format!("{delay:.1}s"));
    }
    run(&resumed);
    eprintln!("killed after {kills:?} (rng seed {seed})");
    assert_eq!(temporaries(&resumed), Vec::<PathBuf>::new());
    let (a, b) = (results(&whole), results(&resumed));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x == y,
            "{name} differs after kills at {kills:?} (seed {seed})"
        );
    }

    // A rerun of a finished sweep reuses everything and changes nothing.
    let rerun = String::from_utf8_lossy(&run(&resumed).stderr).into_owned();
    assert!(rerun.contains("baseline reused"), "{rerun}");
    assert!(
        !rerun.contains("training") && !rerun.contains("images/s"),
        "{rerun}"
    );
    assert_eq!(results(&resumed), b);
}

#[test]
fn a_second_sweep_on_the_same_folder_is_refused() {
    let out = out_dir("locked");
    let mut first = spawn(&out);
    let log = out.join("sweep.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(log.exists(), "the first sweep started");
    let second = sweep(&out).output().unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    common::assert_refused(&second, "a second sweep", &["another sweep is running"]);
}

#[test]
fn bad_sweep_configs_are_refused_by_name_and_write_nothing() {
    let dir = out_dir("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("modle = \"lenet5\"\n", "modle"),
        ("[grid]\ndensities = [1.5]\n", "grid.densities: 1.5"),
        ("[grid]\nbits = [1]\n", "grid.bits"),
        ("[attack]\nnames = [\"cw\"]\n", "unknown attack 'cw'"),
        ("seeds = 0\n", "seeds"),
        // An unknown key is named with its table, on its own line.
        (
            "[attack]\neps = 0.02\nepz = 1\n",
            "line 3: attack.epz: unknown field",
        ),
        ("[grid]\nbits = [8, 4, 8]\n", "grid.bits: 8 is listed twice"),
        (
            "[grid]\ndensities = [0.5, 0.1]\n[figure3]\ndensities = [0.2]\n",
            "figure3.densities: 0.2 is not one of grid.densities",
        ),
        (
            "[finetune]\ngrad = \"bpda\"\n[attack]\ndeepfool_candidates = 1\n",
            "attack.deepfool_candidates",
        ),
        (
            "[attack]\nnames = [\"diva\"]\n",
            "attack.names: diva attacks a pair",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let config = dir.join(format!("bad{i}.toml"));
        std::fs::write(&config, text).unwrap();
        let out = dir.join(format!("out{i}"));
        common::assert_refused(&sweep_with(&config, &out), text, &[expected]);
        assert!(!out.exists(), "{text}: nothing written");
    }
    let output = common::advcomp(&["sweep", "--preset", "fast"]);
    common::assert_refused(&output, "an unknown preset", &["unknown preset 'fast'"]);
}

/// Runs one stage's shard of the tiny sweep; returns its output.
fn run_shard(out: &Path, stage: &str, shard: &str) -> Output {
    sweep(out)
        .args(["--stage", stage, "--shard", shard])
        .output()
        .unwrap()
}

#[test]
fn sharded_stages_in_any_order_give_the_results_of_one_process() {
    let whole = out_dir("shards-whole");
    run(&whole);
    let expected = results(&whole);
    assert!(expected.iter().any(|(name, _)| name == "cells.csv"));
    // The compressed models are fine-tuned as the config says (1 epoch), not by a default.
    for entry in std::fs::read_dir(whole.join("models")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("full-") || name.contains(".tmp-") {
            continue;
        }
        // The safetensors header: its length, then the JSON with the metadata.
        let bytes = std::fs::read(entry.path()).unwrap();
        let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8_lossy(&bytes[8..8 + length]).into_owned();
        assert!(
            header.contains(r#"\"finetune_epochs\":1}"#)
                || header.contains(r#"\"finetune_epochs\":1,"#),
            "{name}: {header}"
        );
    }

    // A stage whose inputs are missing is refused by name, before it writes anything.
    let early = out_dir("shards-early");
    common::assert_refused(
        &run_shard(&early, "attack", "0/1"),
        "a stage without its inputs",
        &["stage attack: 6 input file(s) missing", "full-s1-"],
    );
    assert!(!early.exists(), "nothing written");

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = StdRng::seed_from_u64(seed);
    for n in [1usize, 2, 3, 7] {
        let out = out_dir(&format!("shards-{n}"));
        let mut ran = 0;
        for stage in ["baseline", "compress", "attack", "report"] {
            // The shards of a stage in a random order, each a process of its own.
            let mut order: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            for i in order {
                let output = run_shard(&out, stage, &format!("{i}/{n}"));
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert!(output.status.success(), "{stage} {i}/{n}: {stderr}");
                ran += stderr.matches(", ETA ").count();
                // In a log, every finished job says where the run stands.
                for line in stderr.lines().filter(|l| l.contains("] [")) {
                    assert!(
                        line.contains(", ETA ") || line.ends_with(" reused"),
                        "{line}"
                    );
                }
            }
        }
        // 1 baseline + 5 compressed + 27 matrix rows (3 attacks on 6 sources, and through
        // BPDA on the 3 quantised ones) + 12 of `auto` (2 budgets on 6 sources) + 9 unbounded
        // checks (6 sources, 3 through BPDA) + 16 figure 3 points (the baseline and dns0.1) +
        // the report, each run exactly once over all shards.
        assert_eq!(ran, 71, "{n} shards (rng seed {seed})");
        let got = results(&out);
        assert_eq!(got.len(), expected.len());
        for ((name, x), (_, y)) in expected.iter().zip(&got) {
            assert!(x == y, "{name} differs with {n} shards (rng seed {seed})");
        }
    }
}

#[test]
fn the_differential_stage_compares_diva_with_pgd_on_every_compressed_model() {
    let dir = out_dir("differential");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tiny-differential.toml");
    let text = std::fs::read_to_string(TINY).unwrap() + "\n[differential]\nenabled = true\n";
    std::fs::write(&config, text).unwrap();
    let out = dir.join("out");
    let output = sweep_with(&config, &out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let csv = std::fs::read_to_string(out.join("differential.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    // 5 compressed models x (DIVA, DIVA's margin form, PGD).
    assert_eq!(rows.len(), 15, "{csv}");
    for triple in rows.chunks(3) {
        let (diva, margin, pgd) = (&triple[0], &triple[1], &triple[2]);
        assert_eq!(
            (diva[1], margin[1], pgd[1]),
            ("diva", "diva-margin", "pgd"),
            "{csv}"
        );
        // The same model, images and reference: the same images start right on all three.
        assert_eq!((diva[2], diva[15]), (pgd[2], pgd[15]), "{csv}");
        assert_eq!((diva[2], diva[15]), (margin[2], margin[15]), "{csv}");
        // DIVA and PGD with the tiny preset's step and steps and PGD's default budget; the
        // margin form with its own 25 iterations and the same budget.
        assert_eq!(&diva[9..13], &["0.02", "4", "0.1", "0.08"], "{csv}");
        assert_eq!(&pgd[9..13], &["0.02", "4", "0.1", "0.08"], "{csv}");
        assert_eq!(&margin[9..13], &["", "25", "0.1", "0.1"], "{csv}");
        assert_eq!((diva[13], pgd[13]), ("1.0", ""), "{csv}");
        for row in triple {
            let both: usize = row[15].parse().unwrap();
            assert!(both <= 40, "{csv}");
            for rate in &row[16..19] {
                let rate: f64 = rate.parse().unwrap();
                assert!((0.0..=1.0).contains(&rate), "{csv}");
            }
        }
    }
    // The sweep's numbers are the attack command's on the same checkpoints and images.
    let model = |prefix: &str| {
        std::fs::read_dir(out.join("models"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .unwrap()
    };
    let (dns, full) = (model("dns0.5-"), model("full-"));
    for (i, attack) in ["diva", "diva-margin", "pgd"].into_iter().enumerate() {
        // The tiny preset's settings: 40 images, 4 steps of the default eps (the margin form
        // takes its own iterations).
        let steps: &[&str] = match attack {
            "diva-margin" => &[],
            _ => &["--steps", "4"],
        };
        let output = common::command()
            .args([
                "attack",
                "--attack",
                attack,
                "--limit",
                "40",
                "--backend",
                "cpu",
            ])
            .args(steps)
            .arg("--source")
            .arg(&dns)
            .arg("--reference")
            .arg(&full)
            .arg("--json")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let d = &json["differential"];
        let row = &rows[i];
        assert_eq!(row[2], "dns0.5", "{csv}");
        assert_eq!(d["both_correct"].to_string(), row[15], "{attack}: {json}");
        for (k, field) in [
            "evasive_success_rate",
            "success_rate_compressed",
            "success_rate_reference",
        ]
        .into_iter()
        .enumerate()
        {
            let theirs: f64 = row[16 + k].parse().unwrap();
            assert_eq!(
                d[field].as_f64(),
                Some(theirs),
                "{attack} {field}: {json} vs {csv}"
            );
        }
    }
    let png = std::fs::read(out.join("figures/fig7-differential.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("Beyond the paper: evasive attacks"),
        "{report}"
    );
}

//! `advcomp profile` as a user runs it: every attack on every model variant at every batch
//! size, measured once each by the executor (a `[done/total, ETA]` line per measurement),
//! and its files.

mod common;
use common::Scratch;

#[test]
fn the_profile_measures_every_attack_variant_and_batch_size_and_writes_its_files() {
    let out = Scratch::path("profile");
    let output = common::command()
        .args([
            "profile",
            "--baseline",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/models/lenet5.safetensors"
            ),
            "--bits",
            "8",
            "--density",
            "0.5",
            "--batch-sizes",
            "8,16",
            "--attacks",
            "fgsm,ifgsm",
            "--repeats",
            "1",
            "--backend",
            "cpu",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // 3 variants x 2 batch sizes, then the files: one line each.
    for k in 1..=7 {
        assert!(stderr.contains(&format!("[{k}/7, ETA ")), "{k}: {stderr}");
    }
    let attacks = std::fs::read_to_string(out.join("attacks.csv")).unwrap();
    let rows: Vec<Vec<&str>> = attacks
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 3 * 2 * 2, "{attacks}");
    for model in ["full", "q8", "magnitude0.5"] {
        for attack in ["fgsm", "ifgsm"] {
            for batch in ["8", "16"] {
                let row = rows
                    .iter()
                    .find(|r| r[0] == attack && r[1] == model && r[4] == batch)
                    .unwrap_or_else(|| panic!("no {attack} {model} {batch}: {attacks}"));
                let images_per_second: f64 = row[6].parse().unwrap();
                assert!(images_per_second > 0.0, "{attacks}");
            }
        }
    }
    let split = std::fs::read_to_string(out.join("split.csv")).unwrap();
    assert_eq!(split.lines().count(), 1 + 3 * 2, "{split}");
    let png = std::fs::read(out.join("throughput.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

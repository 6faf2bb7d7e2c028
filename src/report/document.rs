//! `report.md` and `report.html` from one list of blocks, so the two never disagree. The HTML
//! page is self-contained: the figures' SVG is inlined.

use std::path::{Path, PathBuf};

use super::claims::{Claim, Verdict};
use super::plot::Figure;
use super::{Family, Run, View, adversarial_accuracy, summarise};
use crate::Result;
use crate::attack::AttackConfig;
use crate::model::ModelLabel;
use crate::transfer::Gradient;
use crate::transfer::Scenario;

enum Block {
    /// A section heading (the first is the page title); listed in the contents.
    Heading(String),
    Text(String),
    /// A bulleted list.
    List(Vec<String>),
    Code {
        language: &'static str,
        text: String,
    },
    Table {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    Figure(Figure),
    /// The table of contents: every heading after it.
    Contents,
}

fn pct(p: super::Point) -> String {
    if !p.y.is_finite() {
        return "-".into();
    }
    if p.hi > p.lo {
        format!(
            "{:.1} ({:.1}-{:.1})",
            100.0 * p.y,
            100.0 * p.lo,
            100.0 * p.hi
        )
    } else {
        format!("{:.1}", 100.0 * p.y)
    }
}

fn strings<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.map(String::from).to_vec()
}

/// The anchor of a heading: lower case, letters and digits, words joined by '-' (GitHub's
/// rule for Markdown, used for the HTML ids too).
fn anchor(heading: &str) -> String {
    let mut out = String::new();
    for c in heading.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            out.push(c);
        } else if c == ' ' || c == '-' {
            out.push('-');
        }
    }
    out
}

/// Seconds since 1970 as `YYYY-MM-DD HH:MM UTC` (the civil-from-days algorithm).
fn utc(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let (hour, minute) = ((seconds % 86_400) / 3600, (seconds % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02} UTC")
}

/// The report's header: where every number comes from.
fn provenance(view: &View) -> Block {
    let r = view.results;
    let p = &r.provenance;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let command: Vec<String> = std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains([' ', '"', '\'']) {
                format!("'{a}'")
            } else {
                a
            }
        })
        .collect();
    let attacks = r
        .attacks
        .iter()
        .map(AttackConfig::describe)
        .collect::<Vec<_>>()
        .join("; ");
    let rows = [
        ("written by", super::build_version()),
        ("written on", utc(now)),
        ("command", command.join(" ")),
        ("config", format!("{} (as TOML at the end)", p.origin)),
        (
            "model",
            match &p.model_sha256 {
                Some(sha) => format!("{} (SHA-256 {sha})", p.model),
                None => format!(
                    "{} (built in; checkpoints and their SHA-256 in models.csv)",
                    p.model
                ),
            },
        ),
        ("dataset", p.dataset.clone()),
        ("backend, adapter", format!("{}, {}", r.backend, r.adapter)),
        ("seeds", p.seeds.to_string()),
        (
            "images",
            format!(
                "clean accuracy (BASE ACC) on {} test images; {} test images attacked per \
                 source{}",
                p.evaluation_images,
                p.attack_images,
                match p.robustness_images {
                    Some(n) if n < p.attack_images => {
                        format!(", `auto` (the worst case) on the first {n} of them")
                    }
                    _ => String::new(),
                }
            ),
        ),
        ("attacks", attacks),
        (
            "gradient through quantisers",
            if view.has_bpda() {
                "each gradient attack on a quantised model through the STE (as the paper) and \
                 through BPDA (the identity), each its own set; auto through both"
                    .to_string()
            } else {
                "the STE (as the paper)".to_string()
            },
        ),
    ];
    Block::Table {
        header: strings(["provenance", ""]),
        rows: rows.into_iter().map(|(k, v)| vec![k.into(), v]).collect(),
    }
}

/// The summary: each of the paper's claims judged twice (on the paper's attacks, and on the
/// worst case), which verdicts the worst case changes, and what the sweep can say at all.
fn summary(view: &View, paper: &[Claim], worst: &[Claim]) -> Vec<Block> {
    let p = &view.results.provenance;
    let count = |claims: &[Claim], v: Verdict| claims.iter().filter(|c| c.verdict == v).count();
    let testable = paper
        .iter()
        .filter(|c| c.verdict != Verdict::NotTestable)
        .count();
    let mut out = vec![
        Block::Heading("Summary".into()),
        Block::Text(format!(
            "Of the paper's {} summary claims (Sections 4.1 and 4.2), this sweep could test {}. \
             Judged as the paper measured them (its attacks, through the STE on quantised \
             models) it supports {} and {} are inconclusive (the numbers compared lie within \
             each other's 95% intervals); judged on the worst case (each attack at its \
             strongest: the lowest accuracy over its gradient estimators and over `auto` at \
             every budget within its L-inf reach; the claims that compare attacks take each \
             through its strongest estimator only) it supports {} and {} are inconclusive. Each \
             claim, the comparison it was turned into, both verdicts and the numbers that \
             decide them (accuracies under attack: means over seeds, in brackets their 95% \
             interval, over the seeds where there are several, else over the images):",
            paper.len(),
            testable,
            count(paper, Verdict::Supported),
            count(paper, Verdict::Inconclusive),
            count(worst, Verdict::Supported),
            count(worst, Verdict::Inconclusive),
        )),
        Block::Table {
            header: strings([
                "claim",
                "the paper says",
                "tested as",
                "verdict (the paper's attacks)",
                "verdict (worst case)",
                "deciding numbers (the paper's attacks)",
                "deciding numbers (worst case)",
            ]),
            rows: paper
                .iter()
                .zip(worst)
                .map(|(c, w)| {
                    vec![
                        c.id.clone(),
                        c.claim.into(),
                        c.test.into(),
                        c.verdict.text().into(),
                        w.verdict.text().into(),
                        c.evidence.clone(),
                        w.evidence.clone(),
                    ]
                })
                .collect(),
        },
    ];
    let changed: Vec<String> = paper
        .iter()
        .zip(worst)
        .filter(|(c, w)| c.verdict != w.verdict)
        .map(|(c, w)| {
            format!(
                "Claim {} (\"{}\") goes from {} with the paper's attacks to {} with the worst \
                 case ({}).",
                c.id,
                c.claim,
                c.verdict.text(),
                w.verdict.text(),
                w.evidence
            )
        })
        .collect();
    out.push(Block::Text(if changed.is_empty() {
        "No verdict changes between the paper's attacks and the worst case.".into()
    } else {
        format!(
            "{} verdict{} change{} with the worst case: {}",
            changed.len(),
            if changed.len() == 1 { "" } else { "s" },
            if changed.len() == 1 { "s" } else { "" },
            changed.join(" ")
        )
    }));
    for tension in super::claims::tensions(paper) {
        out.push(Block::Text(tension));
    }
    out.push(Block::Text(format!(
        "What this sweep can and cannot say ({}): {}",
        p.origin, p.scope
    )));
    out
}

/// "Can these numbers be trusted?": each model's accuracy under each attack as the paper ran
/// it, through BPDA, under `auto` and in the worst case, the indicators of attack failure, and
/// a plain sentence for every model where an attack shows signs of failure.
fn trust(view: &View) -> Vec<Block> {
    let r = view.results;
    let mut out = vec![Block::Heading("Can these numbers be trusted?".into())];
    out.push(Block::Text(
        "A gradient attack can fail without the model resisting it: the straight-through \
         estimator (STE) is zero wherever a quantiser saturates, so the attack has nothing to \
         follow, and the model looks robust because the attack is blind (gradient masking; \
         Athalye et al. 2018). So every attack that follows gradients also ran through BPDA \
         (the identity through the quantisers), `auto` (AutoAttack's cascade: APGD-CE, \
         APGD-DLR through every estimator, then the gradient-free Square Attack, each on the \
         images still correct) ran on every model, and each cell carries the indicators of \
         attack failure (Pintor et al. 2022): zero gradients at the start, the gap between the \
         estimators, images only the gradient-free attack found, another model's examples \
         beating a model's own, an unbounded attack (budget 1.0) that does not reach 0%, and \
         accuracy rising with a stronger setting. A robustness number is only as good as the \
         worst case over these; the columns below are each model attacked with its own \
         examples (%, means over seeds)."
            .into(),
    ));
    let attacks = view.attacks();
    let budgets = view.auto_budgets();
    let bpda = view.has_bpda();
    let mut runs: Vec<Run> = attacks.iter().map(|&k| Run::Attack(k)).collect();
    if bpda {
        runs.extend(attacks.iter().map(|&k| Run::Bpda(k)));
    }
    runs.extend(budgets.iter().map(|&b| Run::Auto(b)));
    runs.push(Run::WorstCase);
    let mut header = vec!["model".to_string(), "BASE ACC".into()];
    header.extend(runs.iter().map(|r| r.title()));
    header.extend(
        [
            "zero gradient (images, STE)",
            "unbounded check",
            "Square only",
            "indicators raised",
        ]
        .map(String::from),
    );
    let families = [Family::Full, Family::Pruned, Family::Quantised];
    let mut rows = Vec::new();
    let mut sentences = Vec::new();
    let mut clean_models = Vec::new();
    for m in families.iter().flat_map(|f| view.family(*f)) {
        let label = m.label.as_str();
        let mut row = vec![label.to_string(), pct(view.base_accuracy(label))];
        row.extend(
            runs.iter()
                .map(|&run| pct(view.cell(run, label, label, adversarial_accuracy))),
        );
        let own: Vec<&super::Cell> = r
            .cells
            .iter()
            .filter(|c| c.source == label && c.target == label)
            .collect();
        let mean = |f: &dyn Fn(&super::Cell) -> Option<f64>| {
            let values: Vec<f64> = own.iter().filter_map(|c| f(c)).collect();
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        let shown = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}", 100.0 * v));
        row.push(shown(mean(&|c| {
            (c.gradient != Gradient::Identity)
                .then_some(c.metrics.indicators.zero_gradient_images)
                .flatten()
        })));
        let unbounded: Vec<String> = r
            .unbounded
            .iter()
            .filter(|u| u.model == label && u.seed == 1)
            .map(|u| format!("{:.1} ({})", 100.0 * u.accuracy, u.gradient))
            .collect();
        row.push(if unbounded.is_empty() {
            "-".into()
        } else {
            unbounded.join(", ")
        });
        row.push(shown(mean(&|c| c.metrics.indicators.gradient_free_only)));
        let mut raised: Vec<String> = Vec::new();
        for c in &own {
            for flag in c.metrics.indicators.flags() {
                let name = flag.name().to_string();
                if !raised.contains(&name) {
                    raised.push(name);
                }
            }
            if c.seed == 1
                && let Some(s) = c.metrics.indicators.sentence(
                    label,
                    &format!("{} ({})", c.attack, c.gradient),
                    c.metrics.adversarial_accuracy,
                )
            {
                sentences.push(s);
            }
        }
        if raised.is_empty() {
            clean_models.push(label.to_string());
        }
        row.push(if raised.is_empty() {
            "none".into()
        } else {
            raised.join(", ")
        });
        rows.push(row);
    }
    out.push(Block::Table { header, rows });
    if sentences.is_empty() {
        out.push(Block::Text(
            "No attack showed a sign of failure on any model.".into(),
        ));
    } else {
        out.push(Block::Text(
            "Where an attack shows signs of failure (the first seed; each a model attacked with \
             its own examples):"
                .into(),
        ));
        out.push(Block::List(sentences));
    }
    if !clean_models.is_empty() {
        out.push(Block::Text(format!(
            "No indicator was raised on: {}.",
            clean_models.join(", ")
        )));
    }
    out
}

fn blocks(view: &View, figures: &[Figure], paper: &[Claim], worst: &[Claim]) -> Vec<Block> {
    let r = view.results;
    let mut out = vec![
        Block::Heading(r.title.clone()),
        provenance(view),
        Block::Contents,
    ];
    out.extend(trust(view));
    out.extend(summary(view, paper, worst));
    out.push(Block::Heading("Figures".into()));
    out.extend(figures.iter().cloned().map(Block::Figure));
    out.push(Block::Heading("Models".into()));
    let families = [Family::Full, Family::Pruned, Family::Quantised];
    out.push(Block::Table {
        header: strings([
            "model",
            "kind",
            "density",
            "bits",
            "clean accuracy % (BASE ACC)",
        ]),
        rows: families
            .iter()
            .flat_map(|f| view.family(*f))
            .map(|m| {
                vec![
                    m.label.to_string(),
                    m.scheme
                        .as_ref()
                        .map_or(m.family.name().into(), |s| format!("quantised: {s}")),
                    format!("{}", m.density),
                    m.bits.map_or("32-bit float".into(), |b| b.to_string()),
                    pct(view.base_accuracy(&m.label)),
                ]
            })
            .collect(),
    });
    let interval = if r.provenance.seeds > 1 {
        "t-interval across seeds"
    } else {
        "bootstrap over the test images"
    };
    for run in view.runs(true) {
        out.push(Block::Heading(format!(
            "{}: accuracy under attack",
            run.title()
        )));
        let mut header = vec!["model".to_string(), "BASE ACC".into()];
        header.extend(Scenario::PAPER.iter().map(|s| s.label().to_string()));
        header.push("mean |delta| (scenario 1)".into());
        let rows = [Family::Pruned, Family::Quantised]
            .iter()
            .flat_map(|f| view.family(*f))
            .map(|m| {
                let mut row = vec![m.label.to_string(), pct(view.base_accuracy(&m.label))];
                row.extend(Scenario::PAPER.iter().map(|scenario| {
                    let (s, t) = scenario.cell(&m.label);
                    pct(view.cell(run, s, t, adversarial_accuracy))
                }));
                let delta = view.cell(run, &m.label, &m.label, super::mean_abs_delta);
                row.push(format!("{:.4}", delta.y));
                row
            })
            .collect();
        out.push(Block::Table { header, rows });
        let full = view.cell(
            run,
            ModelLabel::FULL,
            ModelLabel::FULL,
            adversarial_accuracy,
        );
        out.push(Block::Text(format!(
            "Accuracy in %, in brackets the 95% interval ({interval}). The baseline's accuracy \
             under its own {} examples: {}.",
            run.title(),
            pct(full)
        )));
    }
    out.extend(differential_blocks(view));
    out.push(Block::Heading("Attack throughput".into()));
    out.push(Block::Table {
        header: strings([
            "seed", "attack", "gradient", "budget", "source", "images", "images/s", "backend",
            "adapter",
        ]),
        rows: r
            .throughput
            .iter()
            .map(|t| {
                vec![
                    t.seed.to_string(),
                    t.attack.to_string(),
                    t.gradient.to_string(),
                    t.budget.map_or("-".into(), |b| b.to_string()),
                    t.source.to_string(),
                    t.images.to_string(),
                    if t.seconds.is_finite() {
                        format!("{:.1}", t.images as f64 / t.seconds.max(1e-9))
                    } else {
                        "n/a".into()
                    },
                    t.backend.clone(),
                    t.adapter.clone(),
                ]
            })
            .collect(),
    });
    let per_seed: Vec<(f64, [f64; 2])> = r
        .models
        .iter()
        .filter(|m| m.family == Family::Full)
        .map(|m| (m.clean_accuracy, [m.clean_accuracy; 2]))
        .collect();
    out.push(Block::Text(format!(
        "Baseline clean accuracy (%) over seeds: {}.",
        pct(summarise(&per_seed))
    )));
    out.push(Block::Heading("Configuration".into()));
    out.push(Block::Code {
        language: "toml",
        text: r.provenance.config_toml.trim_end().to_string(),
    });
    out.push(Block::Text(
        "Files beside this report: `cells.csv` and `cells.jsonl` (one row per seed, attack, \
         source and target, with every metric and the attack's settings), \
         `matrix-ATTACK.csv`, `models.csv`, `eps-steps.csv`, `differential.csv`, `cdf.csv`, \
         `throughput.csv`, `figures/` (PNG and SVG), `sweep.log`. Fractions end in `_frac`; \
         perturbations are in pixel units (images in [0, 1]). The header names the build that \
         wrote this report; results reused from an earlier run of the same folder were \
         computed by the build that made them (their keys cover the settings, not the code)."
            .into(),
    ));
    out
}

/// The headings after the contents block, for the contents.
fn contents(blocks: &[Block]) -> Vec<String> {
    blocks
        .iter()
        .skip_while(|b| !matches!(b, Block::Contents))
        .filter_map(|b| match b {
            Block::Heading(h) => Some(h.clone()),
            _ => None,
        })
        .collect()
}

fn markdown(blocks: &[Block], out: &Path) -> String {
    let mut md = String::new();
    let mut first = true;
    for block in blocks {
        match block {
            Block::Heading(h) if first => {
                md.push_str(&format!("# {h}\n\n"));
                first = false;
            }
            Block::Heading(h) => md.push_str(&format!("## {h}\n\n")),
            Block::Text(t) => md.push_str(&format!("{t}\n\n")),
            Block::List(items) => {
                for item in items {
                    md.push_str(&format!("- {item}\n"));
                }
                md.push('\n');
            }
            Block::Code { language, text } => {
                md.push_str(&format!("```{language}\n{text}\n```\n\n"))
            }
            Block::Contents => {
                md.push_str("Contents: ");
                let links: Vec<String> = contents(blocks)
                    .iter()
                    .map(|h| format!("[{h}](#{})", anchor(h)))
                    .collect();
                md.push_str(&links.join(" · "));
                md.push_str("\n\n");
            }
            Block::Table { header, rows } => {
                let line = |cells: &[String]| {
                    format!(
                        "| {} |\n",
                        cells
                            .iter()
                            .map(|c| c.replace('|', "\\|"))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    )
                };
                md.push_str(&line(header));
                md.push_str(&format!("|{}\n", " --- |".repeat(header.len())));
                for row in rows {
                    md.push_str(&line(row));
                }
                md.push('\n');
            }
            Block::Figure(f) => {
                let rel = f.png.strip_prefix(out).unwrap_or(&f.png);
                // The alt text is the figure's name; the caption follows in full.
                let name = f.caption.split(':').next().unwrap_or_default();
                md.push_str(&format!(
                    "![{name}]({})\n\n*{}*\n\n",
                    rel.display(),
                    f.caption
                ));
            }
        }
    }
    md
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html(blocks: &[Block]) -> Result<String> {
    let mut body = String::new();
    let mut title = String::new();
    for block in blocks {
        match block {
            Block::Heading(h) if title.is_empty() => {
                title = h.clone();
                body.push_str(&format!("<h1>{}</h1>\n", escape(h)));
            }
            Block::Heading(h) => {
                body.push_str(&format!("<h2 id=\"{}\">{}</h2>\n", anchor(h), escape(h)))
            }
            Block::Text(t) => body.push_str(&format!("<p>{}</p>\n", escape(t))),
            Block::List(items) => {
                body.push_str("<ul>\n");
                for item in items {
                    body.push_str(&format!("<li>{}</li>\n", escape(item)));
                }
                body.push_str("</ul>\n");
            }
            Block::Code { text, .. } => body.push_str(&format!("<pre>{}</pre>\n", escape(text))),
            Block::Contents => {
                body.push_str("<nav><b>Contents</b><ol>");
                for h in contents(blocks) {
                    body.push_str(&format!(
                        "<li><a href=\"#{}\">{}</a></li>",
                        anchor(&h),
                        escape(&h)
                    ));
                }
                body.push_str("</ol></nav>\n");
            }
            Block::Table { header, rows } => {
                body.push_str("<table>\n<tr>");
                for h in header {
                    body.push_str(&format!("<th>{}</th>", escape(h)));
                }
                body.push_str("</tr>\n");
                for row in rows {
                    body.push_str("<tr>");
                    for c in row {
                        body.push_str(&format!("<td>{}</td>", escape(c)));
                    }
                    body.push_str("</tr>\n");
                }
                body.push_str("</table>\n");
            }
            Block::Figure(f) => {
                let svg =
                    std::fs::read_to_string(&f.svg).map_err(|e| crate::Error::io(&f.svg, e))?;
                let stem = f
                    .svg
                    .file_stem()
                    .map_or(String::new(), |s| s.to_string_lossy().into_owned());
                body.push_str(&format!(
                    "<figure id=\"{stem}\">{svg}<figcaption>{}</figcaption></figure>\n",
                    escape(&f.caption)
                ));
            }
        }
    }
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n\
         <style>body{{font-family:sans-serif;max-width:1340px;margin:2em auto;padding:0 1em;\
         line-height:1.45}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px \
         solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}}th{{background:#f0f0f0}}\
         figure{{margin:2em 0}}figcaption{{max-width:60em;color:#333}}\
         svg{{max-width:100%;height:auto}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}\
         nav{{background:#f6f6f6;padding:.5em 1em;display:inline-block}}nav ol{{margin:.3em 0}}\
         </style></head>\n<body>\n{body}</body></html>\n",
        escape(&title)
    ))
}

/// Writes `report.md` and `report.html` into `out`; returns the Markdown report's path.
pub(super) fn write(
    out: &Path,
    view: &View,
    figures: &[Figure],
    paper: &[Claim],
    worst: &[Claim],
) -> Result<PathBuf> {
    let blocks = blocks(view, figures, paper, worst);
    let md_path = out.join("report.md");
    crate::write_atomically(&md_path, markdown(&blocks, out).as_bytes())?;
    crate::write_atomically(&out.join("report.html"), html(&blocks)?.as_bytes())?;
    Ok(md_path)
}

/// Beyond the paper: DIVA against PGD on each compressed model (first seed), and what it means.
fn differential_blocks(view: &View) -> Vec<Block> {
    use crate::attack::AttackKind;
    let cells = &view.results.differential;
    if cells.is_empty() {
        return Vec::new();
    }
    let find = |attack: AttackKind, model: &str| {
        cells
            .iter()
            .find(|c| c.seed == 1 && c.attack == attack && *c.model == *model)
            .map(|c| &c.metrics)
    };
    let share = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}", 100.0 * v));
    let mut rows = Vec::new();
    let (mut diva_sum, mut pgd_sum, mut n, mut beats) = (0.0, 0.0, 0, 0);
    // PGD's success on the compressed and on the full model, summed: whether its examples
    // carry over to the full model decides whether DIVA has anything to add.
    let (mut pgd_on_c, mut pgd_on_f) = (0.0, 0.0);
    for m in [Family::Pruned, Family::Quantised]
        .iter()
        .flat_map(|f| view.family(*f))
        .filter(|m| m.seed == 1)
    {
        let (diva, margin, pgd) = (
            find(AttackKind::Diva, &m.label),
            find(AttackKind::DivaMargin, &m.label),
            find(AttackKind::Pgd, &m.label),
        );
        // The stronger of DIVA's two forms on this model.
        let stronger = [(AttackKind::Diva, diva), (AttackKind::DivaMargin, margin)]
            .into_iter()
            .filter_map(|(k, d)| d.map(|d| (k, d)))
            .max_by(|a, b| {
                a.1.evasive_success_rate
                    .total_cmp(&b.1.evasive_success_rate)
            });
        if let (Some((_, d)), Some(p)) = (stronger, pgd) {
            diva_sum += d.evasive_success_rate;
            pgd_sum += p.evasive_success_rate;
            pgd_on_c += p.success_rate_compressed;
            pgd_on_f += p.success_rate_reference;
            beats += (d.evasive_success_rate > p.evasive_success_rate) as usize;
            n += 1;
        }
        rows.push(vec![
            m.label.to_string(),
            pgd.map_or("-".into(), |p| p.both_correct.to_string()),
            share(diva.map(|d| d.evasive_success_rate)),
            share(margin.map(|d| d.evasive_success_rate)),
            share(pgd.map(|p| p.evasive_success_rate)),
            stronger.map_or("-".into(), |(k, _)| k.to_string()),
            share(stronger.map(|(_, d)| d.success_rate_compressed)),
            share(pgd.map(|p| p.success_rate_compressed)),
            share(pgd.map(|p| p.success_rate_reference)),
        ]);
    }
    let carry_over = if n == 0 {
        String::new()
    } else if pgd_on_f >= 0.8 * pgd_on_c {
        format!(
            " Here PGD's examples mostly fool F too (on average {:.1}% of F's images against \
             {:.1}% of C's), so a comparison with F would catch them.",
            100.0 * pgd_on_f / n as f64,
            100.0 * pgd_on_c / n as f64
        )
    } else {
        format!(
            " Here PGD's examples fool F less often than C (on average {:.1}% of F's images \
             against {:.1}% of C's): many of its successes are evasive already.",
            100.0 * pgd_on_f / n as f64,
            100.0 * pgd_on_c / n as f64
        )
    };
    let verdict = if n == 0 {
        String::new()
    } else {
        format!(
            " The stronger form of DIVA is more evasive than PGD's examples on {beats} of the \
             {n} compressed models; averaged over them its evasive success is {:.1}% against \
             PGD's {:.1}%.",
            100.0 * diva_sum / n as f64,
            100.0 * pgd_sum / n as f64,
        )
    };
    vec![
        Block::Heading("Beyond the paper: evasive attacks".into()),
        Block::Table {
            header: [
                "model",
                "both correct",
                "DIVA evasive %",
                "DIVA margin form evasive %",
                "PGD evasive %",
                "stronger DIVA",
                "its success on C %",
                "PGD success on C %",
                "PGD success on full %",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        },
        Block::Text(format!(
            "A company that ships the compressed model C and keeps the full model F (as a check, \
             or in other products) notices an attack when the two disagree. DIVA (Hao et al., \
             MLSys 2022) is crafted on both: it fools C while F stays right; \"evasive\" counts, of \
             the images both classified correctly, those where afterwards C is wrong and F right. \
             DIVA's own form ascends p_F(y) - c p_C(y), softmax probabilities that saturate on \
             confident models; its margin form ascends capped logit margins on APGD's schedule \
             through every gradient estimator of C. PGD, with DIVA's step, steps and budget, is \
             crafted on C alone.{carry_over}{verdict}"
        )),
    ]
}

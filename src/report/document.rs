//! `report.md` and `report.html` from one list of blocks, so the two never disagree. The HTML
//! page is self-contained: the figures' SVG is inlined.

use std::path::{Path, PathBuf};

use super::claims::Claim;
use super::figures::Figure;
use super::{Family, SCENARIOS, View, adversarial_accuracy, summarise};
use crate::Result;

enum Block {
    Heading(String),
    Text(String),
    Code(String),
    Table {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    Figure(Figure),
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

fn blocks(view: &View, figures: &[Figure], claims: &[Claim]) -> Vec<Block> {
    let r = view.results;
    let seeds: Vec<u64> = {
        let mut s: Vec<u64> = r.models.iter().map(|m| m.seed).collect();
        s.dedup();
        s
    };
    let images = r.cells.first().map_or(0, |c| c.metrics.images);
    let mut out = vec![
        Block::Heading(r.title.clone()),
        Block::Text(format!(
            "Backend {} on {}; {} seed(s); {} attacked test images per source model. \
             Accuracies in %; in brackets the 95% interval ({}).",
            r.backend,
            r.adapter,
            seeds.len(),
            images,
            if seeds.len() > 1 {
                "t-interval across seeds"
            } else {
                "bootstrap over the test images"
            }
        )),
        Block::Heading("Models".into()),
    ];
    let families = [Family::Full, Family::Pruned, Family::Quantised];
    out.push(Block::Table {
        header: [
            "model",
            "kind",
            "density",
            "bits",
            "clean accuracy (BASE ACC)",
        ]
        .map(String::from)
        .to_vec(),
        rows: families
            .iter()
            .flat_map(|f| view.family(*f))
            .map(|m| {
                vec![
                    m.label.clone(),
                    format!("{:?}", m.family).to_lowercase(),
                    format!("{}", m.density),
                    m.bits.map_or("32-bit float".into(), |b| b.to_string()),
                    pct(view.base_accuracy(&m.label)),
                ]
            })
            .collect(),
    });
    for attack in view.attacks() {
        out.push(Block::Heading(format!(
            "{}: accuracy under attack",
            attack.name().to_uppercase()
        )));
        let mut header = vec!["model".to_string(), "BASE ACC".into()];
        header.extend(SCENARIOS.iter().map(|(n, _)| n.to_string()));
        header.push("mean |delta| (scenario 1)".into());
        let rows = [Family::Pruned, Family::Quantised]
            .iter()
            .flat_map(|f| view.family(*f))
            .map(|m| {
                let mut row = vec![m.label.clone(), pct(view.base_accuracy(&m.label))];
                row.extend(SCENARIOS.iter().map(|(_, pair)| {
                    let (s, t) = pair(&m.label);
                    pct(view.cell(attack, s, t, adversarial_accuracy))
                }));
                let delta = view.cell(attack, &m.label, &m.label, super::mean_abs_delta);
                row.push(format!("{:.4}", delta.y));
                row
            })
            .collect();
        out.push(Block::Table { header, rows });
        let full = view.cell(attack, "full", "full", adversarial_accuracy);
        out.push(Block::Text(format!(
            "The baseline's accuracy (%) under its own {attack} examples: {}.",
            pct(full)
        )));
    }
    out.extend(differential_blocks(view));
    out.push(Block::Heading("Figures".into()));
    out.extend(figures.iter().cloned().map(Block::Figure));
    out.push(Block::Heading("Check against the paper".into()));
    out.push(Block::Text(
        "Each summary claim of the paper (Sections 4.1 and 4.2), the comparison it was turned \
         into, and what this sweep's numbers say (means over seeds)."
            .into(),
    ));
    out.push(Block::Table {
        header: ["section", "claim", "test", "verdict", "numbers"]
            .map(String::from)
            .to_vec(),
        rows: claims
            .iter()
            .map(|c| {
                vec![
                    c.section.into(),
                    c.claim.into(),
                    c.test.into(),
                    c.verdict.text().into(),
                    c.evidence.clone(),
                ]
            })
            .collect(),
    });
    out.push(Block::Heading("Attack throughput".into()));
    out.push(Block::Table {
        header: [
            "seed", "attack", "source", "images", "images/s", "backend", "adapter",
        ]
        .map(String::from)
        .to_vec(),
        rows: r
            .throughput
            .iter()
            .map(|t| {
                vec![
                    t.seed.to_string(),
                    t.attack.to_string(),
                    t.source.clone(),
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
    out.push(Block::Code(
        serde_json::to_string_pretty(&r.config).expect("config serialises"),
    ));
    out.push(Block::Text(
        "Files: cells.csv and cells.jsonl (one row per seed, attack, source and target, with \
         every metric), matrix-<attack>.csv, models.csv, eps-steps.csv, cdf.csv, \
         throughput.csv, figures/ (PNG and SVG), sweep.log."
            .into(),
    ));
    out
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
            Block::Code(c) => md.push_str(&format!("```json\n{c}\n```\n\n")),
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
                md.push_str(&format!(
                    "![{}]({})\n\n*{}*\n\n",
                    f.caption,
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
            Block::Heading(h) => body.push_str(&format!("<h2>{}</h2>\n", escape(h))),
            Block::Text(t) => body.push_str(&format!("<p>{}</p>\n", escape(t))),
            Block::Code(c) => body.push_str(&format!("<pre>{}</pre>\n", escape(c))),
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
                body.push_str(&format!(
                    "<figure>{svg}<figcaption>{}</figcaption></figure>\n",
                    escape(&f.caption)
                ));
            }
        }
    }
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n\
         <style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;\
         padding:3px 8px;text-align:left;vertical-align:top}}th{{background:#f0f0f0}}\
         figure{{margin:1.5em 0}}svg{{max-width:100%;height:auto}}pre{{background:#f6f6f6;\
         padding:1em;overflow:auto}}</style></head>\n<body>\n{body}</body></html>\n",
        escape(&title)
    ))
}

/// Writes `report.md` and `report.html` into `out`; returns the Markdown report's path.
pub(super) fn write(
    out: &Path,
    view: &View,
    figures: &[Figure],
    claims: &[Claim],
) -> Result<PathBuf> {
    let blocks = blocks(view, figures, claims);
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
            .find(|c| c.seed == 1 && c.attack == attack && c.model == model)
            .map(|c| &c.metrics)
    };
    let share = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}", 100.0 * v));
    let mut rows = Vec::new();
    let (mut diva_sum, mut pgd_sum, mut n) = (0.0, 0.0, 0);
    // PGD's success on the compressed and on the full model, summed: whether its examples
    // carry over to the full model decides whether DIVA has anything to add.
    let (mut pgd_on_c, mut pgd_on_f) = (0.0, 0.0);
    for m in [Family::Pruned, Family::Quantised]
        .iter()
        .flat_map(|f| view.family(*f))
        .filter(|m| m.seed == 1)
    {
        let (diva, pgd) = (
            find(AttackKind::Diva, &m.label),
            find(AttackKind::Pgd, &m.label),
        );
        if let (Some(d), Some(p)) = (diva, pgd) {
            diva_sum += d.evasive_success_rate;
            pgd_sum += p.evasive_success_rate;
            pgd_on_c += p.success_rate_compressed;
            pgd_on_f += p.success_rate_reference;
            n += 1;
        }
        rows.push(vec![
            m.label.clone(),
            diva.map_or("-".into(), |d| d.both_correct.to_string()),
            share(diva.map(|d| d.evasive_success_rate)),
            share(pgd.map(|p| p.evasive_success_rate)),
            share(diva.map(|d| d.success_rate_compressed)),
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
             against {:.1}% of C's): many of its successes are evasive already, and DIVA, which \
             trades success on C for never fooling F, has less to add. DIVA gains most where \
             PGD's examples carry over to the full model (larger budgets, bigger models).",
            100.0 * pgd_on_f / n as f64,
            100.0 * pgd_on_c / n as f64
        )
    };
    let verdict = if n == 0 {
        String::new()
    } else if pgd_sum > 0.0 {
        format!(
            " Averaged over the {n} compressed models, DIVA's evasive success is {:.1}% against \
             PGD's {:.1}%: {:.1} times as evasive.",
            100.0 * diva_sum / n as f64,
            100.0 * pgd_sum / n as f64,
            diva_sum / pgd_sum
        )
    } else {
        format!(
            " Averaged over the {n} compressed models, DIVA's evasive success is {:.1}%; PGD's \
             examples were never evasive.",
            100.0 * diva_sum / n as f64
        )
    };
    vec![
        Block::Heading("Beyond the paper: evasive attacks".into()),
        Block::Table {
            header: [
                "model",
                "both correct",
                "DIVA evasive %",
                "PGD evasive %",
                "DIVA success on C %",
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
             PGD, with the same step, steps and budget, is crafted on C alone.{carry_over}\
             {verdict}"
        )),
    ]
}

//! The paper's summary claims (Sections 4.1 and 4.2), each turned into a comparison this
//! sweep's numbers can make: a trend is the value at the lowest density (bitwidth) of the grid
//! against the value at the highest, averaged over seeds.

// The claims are the paper's, about its three attacks by name.
use super::{Family, Point, Run, View, adversarial_accuracy};
use crate::attack::AttackKind::{self, DeepFool, Ifgm, Ifgsm};
use crate::transfer::Scenario;

/// Which numbers a claim is judged on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judge {
    /// The paper's attacks as the paper ran them (through the STE on quantised models).
    Paper,
    /// Each attack at its strongest: the lowest accuracy over its gradient estimators (STE,
    /// BPDA) and over `auto` at every budget within its L-inf reach.
    WorstCase,
    /// Each attack through its strongest estimator, without `auto`: how the worst case judges
    /// a claim that compares the attacks themselves (one attack cannot stand in for another).
    AttackAtItsBest,
}

impl Judge {
    fn run(self, attack: AttackKind) -> Run {
        match self {
            Judge::Paper => Run::Attack(attack),
            Judge::WorstCase => Run::Strongest(attack),
            Judge::AttackAtItsBest => Run::Estimators(attack),
        }
    }

    /// The judge of a claim about the attacks rather than the models.
    fn comparing_attacks(self) -> Judge {
        match self {
            Judge::WorstCase => Judge::AttackAtItsBest,
            other => other,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Supported,
    /// The direction holds, the size does not.
    Partly,
    NotSupported,
    /// The numbers compared lie within each other's 95% intervals.
    Inconclusive,
    NotTestable,
}

impl Verdict {
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Supported => "supported",
            Verdict::Partly => "partly supported",
            Verdict::NotSupported => "not supported",
            Verdict::Inconclusive => "inconclusive (within the 95% intervals)",
            Verdict::NotTestable => "not testable here",
        }
    }
}

/// One claim and what this sweep says about it.
#[derive(Clone, Debug)]
pub struct Claim {
    /// The paper's section and the claim's place in its summary: "4.1 (1)".
    pub id: String,
    pub section: &'static str,
    pub claim: &'static str,
    /// How the claim was turned into a comparison.
    pub test: &'static str,
    pub verdict: Verdict,
    pub evidence: String,
}

/// Adversarial accuracy (with its 95% interval) at the highest and at the lowest grid point of
/// `family` for one attack and scenario (index into [`Scenario::PAPER`]).
fn trend_points(
    view: &View,
    judge: Judge,
    family: Family,
    attack: AttackKind,
    scenario: usize,
) -> Option<(Point, Point)> {
    let models = view.paper_family(family);
    if models.len() < 2 {
        return None;
    }
    let scenario = Scenario::PAPER[scenario];
    let at = |label: &str| {
        let (s, t) = scenario.cell(label);
        view.cell(judge.run(attack), s, t, adversarial_accuracy)
    };
    let (high, low) = (at(&models[0].label), at(&models[models.len() - 1].label));
    (high.y.is_finite() && low.y.is_finite()).then_some((high, low))
}

/// The two values of [`trend_points`].
fn trend(
    view: &View,
    judge: Judge,
    family: Family,
    attack: AttackKind,
    scenario: usize,
) -> Option<(f64, f64)> {
    trend_points(view, judge, family, attack, scenario).map(|(h, l)| (h.y, l.y))
}

/// Whether two values differ beyond their 95% intervals (disjoint intervals; plain
/// inequality where there are none).
fn separated(a: Point, b: Point) -> bool {
    a.lo > b.hi || b.lo > a.hi || (a.lo == a.hi && b.lo == b.hi && a.y != b.y)
}

/// A mean with its 95% interval where it has one, in percent ("3.0% (1.2-4.8)") or in points
/// (`unit` "").
fn with_interval(p: Point, unit: &str) -> String {
    let mean = format!("{:.1}{unit}", 100.0 * p.y);
    if p.hi > p.lo {
        format!("{mean} ({:.1}-{:.1})", 100.0 * p.lo, 100.0 * p.hi)
    } else {
        mean
    }
}

/// The adversarial accuracy of `run` on a (source, target) cell in one seed.
fn seed_accuracy(view: &View, run: Run, seed: u64, (source, target): (&str, &str)) -> Option<f64> {
    view.run_cell(run, seed, source, target)
        .map(|c| c.metrics.adversarial_accuracy)
}

/// Checks that `rising` (low > high) or falling holds for every (attack, scenario) listed;
/// the evidence lists each pair's numbers.
fn trend_claim(
    view: &View,
    judge: Judge,
    family: Family,
    cases: &[(AttackKind, usize)],
    rising: bool,
    grid: &str,
) -> (Verdict, String) {
    let mut parts = Vec::new();
    let (mut all, mut contradicted, mut clear) = (true, false, true);
    for &(attack, scenario) in cases {
        match trend_points(view, judge, family, attack, scenario) {
            Some((high, low)) => {
                let holds = if rising {
                    low.y > high.y
                } else {
                    low.y < high.y
                };
                let beyond_noise = separated(high, low);
                all &= holds;
                clear &= beyond_noise;
                contradicted |= !holds && beyond_noise;
                parts.push(format!(
                    "{attack} scenario {}: {} at the highest {grid} -> {} at the lowest{}",
                    scenario + 1,
                    with_interval(high, "%"),
                    with_interval(low, "%"),
                    if beyond_noise { "" } else { " (within noise)" }
                ));
            }
            None => {
                return (
                    Verdict::NotTestable,
                    format!("needs {attack} and at least two {grid} points"),
                );
            }
        }
    }
    let verdict = if contradicted {
        Verdict::NotSupported
    } else if all && clear {
        Verdict::Supported
    } else {
        Verdict::Inconclusive
    };
    (verdict, parts.join("; "))
}

/// The paper's claims judged on `judge`'s numbers.
pub(super) fn check(view: &View, judge: Judge) -> Vec<Claim> {
    let clipped = [(Ifgsm, 0), (Ifgm, 0)];
    let mut claims = Vec::new();
    let mut push = |section: &'static str, claim, test, (verdict, evidence): (Verdict, String)| {
        let place = 1 + claims
            .iter()
            .filter(|c: &&Claim| c.section == section)
            .count();
        claims.push(Claim {
            id: format!("{section} ({place})"),
            section,
            claim,
            test,
            verdict,
            evidence,
        })
    };
    let s = |scenario: usize| [(Ifgsm, scenario), (Ifgm, scenario)];
    push(
        "4.1",
        "It becomes easier to attack the baseline model using a compressed model when densities are low.",
        "IFGSM and IFGM, scenario 3: accuracy at the lowest density < at the highest.",
        trend_claim(view, judge, Family::Pruned, &s(2), false, "density"),
    );
    push(
        "4.1",
        "It becomes harder to attack the compressed model using a baseline model when densities are low.",
        "IFGSM and IFGM, scenario 2: accuracy at the lowest density > at the highest.",
        trend_claim(view, judge, Family::Pruned, &s(1), true, "density"),
    );
    push(
        "4.1",
        "For scenarios 1 and 3, DeepFool performs better as the network densities decrease.",
        "DeepFool, scenarios 1 and 3: accuracy at the lowest density < at the highest.",
        trend_claim(
            view,
            judge.comparing_attacks(),
            Family::Pruned,
            &[(DeepFool, 0), (DeepFool, 2)],
            false,
            "density",
        ),
    );
    push(
        "4.1",
        "For scenarios 1 and 3, clipped attacks (IFGSM and IFGM) perform worse as the network densities decrease.",
        "IFGSM and IFGM, scenarios 1 and 3: accuracy at the lowest density > at the highest.",
        trend_claim(
            view,
            judge.comparing_attacks(),
            Family::Pruned,
            &[clipped[0], clipped[1], (Ifgsm, 2), (Ifgm, 2)],
            true,
            "density",
        ),
    );
    push(
        "4.2",
        "Transferability between quantised and full models is not affected by fewer fractional bits at high precision.",
        "IFGSM and IFGM, scenarios 2 and 3, models above 8 bits: accuracies within 5 points of each other.",
        high_precision_flat(view, judge),
    );
    push(
        "4.2",
        "Aggressive reductions in fractional bits introduce the same effect as fine-grained pruning.",
        "IFGSM and IFGM, scenarios 1-3: the change from the highest to the lowest bitwidth has the sign of the change from the highest to the lowest density in at least 4 of the 6 cases.",
        same_effect_as_pruning(view, judge),
    );
    push(
        "4.2",
        "Smaller integer bitwidths make it marginally harder to attack the baseline with examples from compressed models.",
        "IFGSM and IFGM, scenario 3: accuracy at the lowest bitwidth > at the highest, by at most 10 points (marginally).",
        marginal(
            trend_claim(view, judge, Family::Quantised, &s(2), true, "bitwidth"),
            view,
            judge,
        ),
    );
    push(
        "4.2",
        "In terms of classification accuracy, IFGSM transfers best.",
        "Mean accuracy over the scenario-2 and scenario-3 cells of the quantised models is lowest under IFGSM.",
        ifgsm_transfers_best(view, judge.comparing_attacks()),
    );
    claims
}

/// Where the paper's own claims pull against each other, with this sweep's verdicts.
pub(super) fn tensions(claims: &[Claim]) -> Vec<String> {
    let find = |id: &str| claims.iter().find(|c| c.id == id);
    let mut out = Vec::new();
    if let (Some(a), Some(b)) = (find("4.1 (1)"), find("4.1 (4)")) {
        out.push(format!(
            "Claims {} and {} of Section 4.1 read the same cells, IFGSM and IFGM in scenario 3 \
             (examples made on the pruned model, tested on the baseline), in opposite \
             directions: {} needs their accuracy to fall as density falls, {} needs it to rise. \
             At most one can hold on any data. Here: {} is {}, {} is {}.",
            a.id,
            b.id,
            a.id,
            b.id,
            a.id,
            a.verdict.text(),
            b.id,
            b.verdict.text()
        ));
    }
    out
}

/// A rising-trend verdict, downgraded when the rise is larger than "marginal" (10 points).
fn marginal(
    (verdict, evidence): (Verdict, String),
    view: &View,
    judge: Judge,
) -> (Verdict, String) {
    let largest = [Ifgsm, Ifgm]
        .iter()
        .filter_map(|&a| trend(view, judge, Family::Quantised, a, 2))
        .map(|(high, low)| low - high)
        .fold(0.0, f64::max);
    if verdict == Verdict::Supported && largest > 0.10 {
        return (
            Verdict::Partly,
            format!(
                "{evidence}: harder, but by up to {:.1} points, not marginally",
                100.0 * largest
            ),
        );
    }
    (verdict, evidence)
}

fn high_precision_flat(view: &View, judge: Judge) -> (Verdict, String) {
    let models: Vec<_> = view
        .paper_family(Family::Quantised)
        .into_iter()
        .filter(|m| m.bits.unwrap_or(0) > 8)
        .collect();
    if models.len() < 2 {
        return (
            Verdict::NotTestable,
            "needs at least two quantised models above 8 bits".into(),
        );
    }
    let mut worst = 0.0f64;
    let mut parts = Vec::new();
    for attack in [Ifgsm, Ifgm] {
        for scenario in [1, 2] {
            let values: Vec<f64> = models
                .iter()
                .map(|m| {
                    let (s, t) = Scenario::PAPER[scenario].cell(&m.label);
                    view.cell(judge.run(attack), s, t, adversarial_accuracy).y
                })
                .collect();
            if values.iter().any(|v| !v.is_finite()) {
                return (Verdict::NotTestable, format!("no {attack} cells"));
            }
            let spread = spread_of(&values);
            worst = worst.max(spread);
            // The same spread within each seed: how much of it the seeds' noise could make.
            let within_seeds = view.over_seeds(|seed| {
                let values: Option<Vec<f64>> = models
                    .iter()
                    .map(|m| {
                        let cell = Scenario::PAPER[scenario].cell(&m.label);
                        seed_accuracy(view, judge.run(attack), seed, cell)
                    })
                    .collect();
                values.map(|v| spread_of(&v))
            });
            parts.push(format!(
                "{attack} scenario {}: spread {:.1} points{}",
                scenario + 1,
                100.0 * spread,
                if within_seeds.hi > within_seeds.lo {
                    format!(" (within a seed {})", with_interval(within_seeds, ""))
                } else {
                    String::new()
                }
            ));
        }
    }
    let verdict = if worst <= 0.05 {
        Verdict::Supported
    } else {
        Verdict::NotSupported
    };
    (verdict, parts.join("; "))
}

/// The largest value less the smallest.
fn spread_of(values: &[f64]) -> f64 {
    values.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        - values.iter().cloned().fold(f64::INFINITY, f64::min)
}

fn same_effect_as_pruning(view: &View, judge: Judge) -> (Verdict, String) {
    let mut agree = 0;
    let mut parts = Vec::new();
    for attack in [Ifgsm, Ifgm] {
        for scenario in 0..3 {
            let (Some(q), Some(p)) = (
                trend(view, judge, Family::Quantised, attack, scenario),
                trend(view, judge, Family::Pruned, attack, scenario),
            ) else {
                return (
                    Verdict::NotTestable,
                    "needs pruned and quantised models under IFGSM and IFGM".into(),
                );
            };
            let (dq, dp) = (q.1 - q.0, p.1 - p.0);
            agree += (dq.signum() == dp.signum()) as usize;
            parts.push(format!(
                "{attack} scenario {}: bits {:+.1}, density {:+.1} points",
                scenario + 1,
                100.0 * dq,
                100.0 * dp
            ));
        }
    }
    let verdict = if agree >= 4 {
        Verdict::Supported
    } else {
        Verdict::NotSupported
    };
    (
        verdict,
        format!("{agree} of 6 agree ({})", parts.join("; ")),
    )
}

fn ifgsm_transfers_best(view: &View, judge: Judge) -> (Verdict, String) {
    let models = view.paper_family(Family::Quantised);
    let mean = |attack: AttackKind| {
        let values: Vec<f64> = models
            .iter()
            .flat_map(|m| {
                [
                    Scenario::FullToComp.cell(&m.label),
                    Scenario::CompToFull.cell(&m.label),
                ]
            })
            .map(|(s, t)| view.cell(judge.run(attack), s, t, adversarial_accuracy).y)
            .collect();
        let finite = values.iter().all(|v| v.is_finite()) && !values.is_empty();
        finite.then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let attacks: Vec<(AttackKind, f64)> = view
        .attacks()
        .into_iter()
        .filter_map(|a| mean(a).map(|m| (a, m)))
        .collect();
    let Some(ifgsm) = attacks.iter().find(|(a, _)| *a == Ifgsm).map(|(_, m)| *m) else {
        return (
            Verdict::NotTestable,
            "needs IFGSM and quantised models".into(),
        );
    };
    if attacks.len() < 2 {
        return (Verdict::NotTestable, "needs a second attack".into());
    }
    let best = attacks.iter().all(|(_, m)| ifgsm <= *m);
    // Each attack's mean within each seed, for its interval over seeds.
    let per_seed = |attack: AttackKind| {
        view.over_seeds(|seed| {
            let values: Option<Vec<f64>> = models
                .iter()
                .flat_map(|m| {
                    [
                        Scenario::FullToComp.cell(&m.label),
                        Scenario::CompToFull.cell(&m.label),
                    ]
                })
                .map(|cell| seed_accuracy(view, judge.run(attack), seed, cell))
                .collect();
            values
                .filter(|v| !v.is_empty())
                .map(|v| v.iter().sum::<f64>() / v.len() as f64)
        })
    };
    let evidence = attacks
        .iter()
        .map(|&(a, m)| {
            let seeds = per_seed(a);
            format!(
                "{a} {}",
                with_interval(Point::new(m, seeds.lo, seeds.hi), "%")
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let verdict = if best {
        Verdict::Supported
    } else {
        Verdict::NotSupported
    };
    (verdict, evidence)
}

//! The sweep on a real Slurm cluster: a single-node cluster (Debian's slurmctld, slurmd and
//! munge) started by the test, `advcomp sweep --slurm` on the tiny preset, and every result
//! file compared byte for byte with a local run of the same preset.
//!
//! The cluster needs root and the packages `slurmctld slurmd slurm-client munge`
//! (`cargo xtask test` installs them where apt allows). Without them the test is skipped,
//! unless `ADVCOMP_REQUIRE_SLURM` is set (CI sets it): then it fails.

mod common;
use common::Scratch;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::sweep_results as results;
use common::tiny_sweep as sweep;

fn out_dir(name: &str) -> Scratch {
    Scratch::path(&format!("slurm-{name}"))
}

fn ok(output: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{what}: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A single-node Slurm cluster in a temporary folder, stopped (with the munge daemon, if the
/// test started it) when dropped.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    munged_pid: Option<String>,
}

fn which(program: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).is_file())
}

fn shell(script: &str) -> Result<String, String> {
    let output = Command::new("sh")
        .args(["-c", script])
        .output()
        .map_err(|e| format!("{script}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "`{script}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Cluster {
    fn start() -> Result<Cluster, String> {
        for program in [
            "slurmctld",
            "slurmd",
            "sbatch",
            "squeue",
            "scontrol",
            "munged",
        ] {
            if !which(program) {
                return Err(format!(
                    "{program} is not installed (apt-get install slurmctld slurmd slurm-client munge)"
                ));
            }
        }
        if shell("id -u")? != "0" {
            return Err("starting slurmctld and slurmd needs root".into());
        }
        // munge authenticates Slurm's messages: a key, and its daemon running as `munge`.
        let mut munged_pid = None;
        if shell("munge -n | unmunge").is_err() {
            shell(
                "test -s /etc/munge/munge.key || (mungekey --create --force && \
                 chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key)",
            )?;
            shell(
                "mkdir -p /run/munge /var/log/munge /var/lib/munge && \
                 chown munge:munge /run/munge /var/log/munge /var/lib/munge",
            )?;
            shell("runuser -u munge -- /usr/sbin/munged")?;
            munged_pid = Some(shell("cat /run/munge/munged.pid")?);
            shell("munge -n | unmunge")?;
        }
        let dir = std::env::temp_dir().join(format!("advcomp-slurm-{}", std::process::id()));
        for sub in ["state", "spool", "log"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
        }
        let host = shell("hostname -s")?;
        let cpus = shell("nproc")?;
        // Ports of this test's own (a stale cluster of an earlier run cannot answer for it).
        let port = 20_000 + (std::process::id() % 10_000) as u16 * 2;
        let d = dir.display();
        let conf = dir.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=advcomp-test\n\
                 SlurmctldHost={host}\n\
                 SlurmUser=root\n\
                 SlurmdUser=root\n\
                 AuthType=auth/munge\n\
                 SlurmctldPort={port}\n\
                 SlurmdPort={}\n\
                 StateSaveLocation={d}/state\n\
                 SlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\n\
                 SlurmdPidFile={d}/slurmd.pid\n\
                 SlurmctldLogFile={d}/log/slurmctld.log\n\
                 SlurmdLogFile={d}/log/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\n\
                 TaskPlugin=task/none\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core\n\
                 MpiDefault=none\n\
                 ReturnToService=2\n\
                 JobCompType=jobcomp/none\n\
                 AccountingStorageType=accounting_storage/none\n\
                 NodeName={host} CPUs={cpus} State=UNKNOWN\n\
                 PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
                port + 1
            ),
        )
        .map_err(|e| e.to_string())?;
        let cluster = Cluster {
            dir,
            conf,
            munged_pid,
        };
        cluster.run("slurmctld", &[])?;
        cluster.run("slurmd", &["-N", &host])?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = cluster
                .run("sinfo", &["-h", "-o", "%T"])
                .unwrap_or_default();
            if state == "idle" {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the node did not come up (state '{state}'); logs in {}",
                    cluster.dir.join("log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Runs a Slurm program against this cluster.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let output = self
            .command(program)
            .args(args)
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            Err(format!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run("scontrol", &["shutdown"]);
        if let Some(pid) = &self.munged_pid {
            let _ = shell(&format!("kill {pid}"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_sweep_on_slurm_gives_the_results_of_a_local_run() {
    let cluster = match Cluster::start() {
        Ok(cluster) => cluster,
        Err(why) if std::env::var_os("ADVCOMP_REQUIRE_SLURM").is_none() => {
            eprintln!("skipped: no Slurm cluster can be started here: {why}");
            return;
        }
        Err(why) => panic!("ADVCOMP_REQUIRE_SLURM is set but Slurm cannot be started: {why}"),
    };
    let local = out_dir("local");
    ok(&sweep(&local).output().unwrap(), "local sweep");

    let out = out_dir("cluster");
    let stdout = ok(
        &sweep(&out)
            .arg("--slurm")
            .env("SLURM_CONF", &cluster.conf)
            .output()
            .unwrap(),
        "sweep --slurm",
    );
    assert!(stdout.contains("submitted 4 stage(s)"), "{stdout}");
    // Wait for the chain to finish: every job leaves the queue.
    let deadline = Instant::now() + Duration::from_secs(20 * 60);
    loop {
        let queue = cluster.run("squeue", &["-h", "-o", "%i %j %T %r"]).unwrap();
        if queue.is_empty() {
            break;
        }
        assert!(
            !queue.contains("DependencyNeverSatisfied") && Instant::now() < deadline,
            "the Slurm jobs did not finish: {queue}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let logs = out.join("slurm/logs");
    let log_text = || {
        let mut text = String::new();
        for entry in std::fs::read_dir(&logs).unwrap().flatten() {
            text += &format!("== {}\n", entry.path().display());
            text += &std::fs::read_to_string(entry.path()).unwrap_or_default();
        }
        text
    };
    assert!(out.join("report.md").is_file(), "no report: {}", log_text());
    // 1 + 5 + 64 + 1 array tasks, each with its own log.
    assert_eq!(
        std::fs::read_dir(&logs).unwrap().count(),
        71,
        "{}",
        log_text()
    );
    let (expected, got) = (results(&local), results(&out));
    assert_eq!(expected.len(), got.len());
    for ((name, x), (_, y)) in expected.iter().zip(&got) {
        assert!(x == y, "{name} differs between the local and the Slurm run");
    }
}

#[test]
fn a_dry_run_writes_one_chained_array_per_stage_and_submits_nothing() {
    let out = out_dir("dry");
    let stdout = ok(
        &sweep(&out)
            .args([
                "--slurm",
                "--dry-run",
                "--partition",
                "gpu",
                "--time",
                "1:00:00",
                "--gpus-per-task",
                "1",
                "--max-parallel",
                "4",
            ])
            .env("PATH", "/nonexistent") // no sbatch can be called
            .output()
            .unwrap(),
        "--slurm --dry-run",
    );
    assert!(stdout.contains("nothing submitted"), "{stdout}");
    let tasks = [
        ("baseline", 1),
        // DNS 0.5 and 0.1, Q(8,2), Q(4,1) and int8 per channel.
        ("compress", 5),
        // 18 matrix rows, 9 through BPDA, 12 of `auto`, 9 unbounded checks, 16 Figure 3 points.
        ("attack", 64),
        ("report", 1),
    ];
    for (stage, n) in tasks {
        let script = std::fs::read_to_string(out.join(format!("slurm/{stage}.sbatch"))).unwrap();
        for line in [
            format!("#SBATCH --array=0-{}%4", n - 1),
            "#SBATCH --partition=gpu".into(),
            "#SBATCH --time=1:00:00".into(),
            "#SBATCH --gpus-per-task=1".into(),
            "#SBATCH --ntasks=1".into(),
            // The shard count written out: a rerun of some tasks splits the stage the same way.
            format!("--stage {stage} --shard \"$SLURM_ARRAY_TASK_ID/{n}\""),
        ] {
            assert!(
                script.contains(&line),
                "{stage}.sbatch lacks {line}:\n{script}"
            );
        }
        assert!(stdout.contains(&script), "{stage}.sbatch printed");
    }
    // Every task reads the config written beside the scripts: it reads back as the preset.
    let config = std::fs::read_to_string(out.join("slurm/sweep.toml")).unwrap();
    assert!(config.contains("densities = [0.5, 0.1]"), "{config}");
    assert!(!out.join("models").exists(), "nothing run");
}

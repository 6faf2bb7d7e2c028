use std::fmt;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in advcomp, each naming what it concerns.
#[derive(Debug)]
pub enum Error {
    /// A data file that is missing, unreadable or malformed.
    Data { path: PathBuf, problem: String },
    /// A checkpoint file that cannot be read or does not fit the model.
    Checkpoint { path: PathBuf, problem: String },
    /// A model file (ONNX) that cannot be read or uses what advcomp does not support.
    Model { path: PathBuf, problem: String },
    /// An option or argument with a value that cannot work.
    Usage(String),
    /// A setting whose value cannot work, named by its field (`eps`, `attack.eps`): library
    /// code names fields, the command line turns them into its flags ([`Error::for_flags`]).
    Invalid { field: String, problem: String },
    /// A model gave NaN or infinite logits, or an attack on it NaN or infinite pixels: never a
    /// number to report. The library runs models, not files; the caller that loaded the model
    /// in `role` names its file ([`Error::naming`]).
    NonFinite { role: ModelRole, problem: String },
    /// The requested backend or adapter is not available.
    Backend(String),
    /// An I/O error while writing an output.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Which of the models a call runs: the one attacked (or the one a set was made on), the
/// reference beside it (DIVA's full model), or the one evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelRole {
    Source,
    Reference,
    Target,
}

impl fmt::Display for ModelRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelRole::Source => "the attacked model",
            ModelRole::Reference => "the reference model",
            ModelRole::Target => "the evaluated model",
        })
    }
}

impl Error {
    pub fn data(path: &Path, problem: impl Into<String>) -> Self {
        Error::Data {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
    pub fn checkpoint(path: &Path, problem: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
    pub fn model(path: &Path, problem: impl Into<String>) -> Self {
        Error::Model {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
    pub fn usage(problem: impl Into<String>) -> Self {
        Error::Usage(problem.into())
    }
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }
    /// The same error with its field inside `section` (`eps` -> `attack.eps`), or renamed
    /// where `renames` says (`candidates` -> `attack.deepfool_candidates`).
    pub fn in_section(self, section: &str, renames: &[(&str, &str)]) -> Self {
        match self {
            Error::Invalid { field, problem } => {
                let field = renames
                    .iter()
                    .find(|(from, _)| *from == field)
                    .map_or_else(|| format!("{section}.{field}"), |(_, to)| to.to_string());
                Error::Invalid { field, problem }
            }
            other => other,
        }
    }
    /// The same error naming the command-line flag of its field: `max_iterations` ->
    /// `--max-iterations`, or the flag `renames` gives (`learning_rate` -> `--lr`).
    pub fn for_flags(self, renames: &[(&str, &str)]) -> Self {
        match self {
            Error::Invalid { field, problem } => {
                let flag = renames.iter().find(|(from, _)| *from == field).map_or_else(
                    || format!("--{}", field.replace('_', "-")),
                    |(_, to)| to.to_string(),
                );
                Error::Invalid {
                    field: flag,
                    problem,
                }
            }
            other => other,
        }
    }
    /// A [`Error::NonFinite`] of the model in `role`, as an error naming its file `path`;
    /// any other error as it is.
    pub fn naming(self, role: ModelRole, path: &Path) -> Self {
        match self {
            Error::NonFinite { role: r, problem } if r == role => Error::model(path, problem),
            other => other,
        }
    }
    /// A [`Error::NonFinite`] of any model as one of the model in `role` (a call that runs
    /// one model for a caller that knows it in another role); any other error as it is.
    pub fn in_role(self, role: ModelRole) -> Self {
        match self {
            Error::NonFinite { problem, .. } => Error::NonFinite { role, problem },
            other => other,
        }
    }
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    /// The process exit code for this error: 2 for bad input (data, checkpoint, model, usage,
    /// a model that computes NaN), 1 for failures of the environment (backend, writing).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Data { .. }
            | Error::Checkpoint { .. }
            | Error::Model { .. }
            | Error::Usage(_)
            | Error::Invalid { .. }
            | Error::NonFinite { .. } => 2,
            Error::Backend(_) | Error::Io { .. } => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Data { path, problem } => write!(f, "data file {}: {problem}", path.display()),
            Error::Checkpoint { path, problem } => {
                write!(f, "checkpoint {}: {problem}", path.display())
            }
            Error::Model { path, problem } => write!(f, "model {}: {problem}", path.display()),
            Error::Usage(problem) => write!(f, "{problem}"),
            Error::Invalid { field, problem } => write!(f, "{field}: {problem}"),
            Error::NonFinite { role, problem } => write!(f, "{role}: {problem}"),
            Error::Backend(problem) => write!(f, "backend: {problem}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for Error {}

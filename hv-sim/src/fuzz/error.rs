//! The fuzzer's error types. `Display` and `Error` are written by hand so
//! that hv-sim without default features does not need thiserror.

use std::fmt;
use std::path::PathBuf;

/// What a failing case found ([`super::run_case`], [`super::replay`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finding {
    /// An invariant or an oracle disagreed: the target's description of
    /// the call, the state and the rule broken.
    Broken(String),
    /// The code under test panicked: the message and where.
    Panic(String),
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Broken(what) => f.write_str(what),
            Finding::Panic(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Finding {}

/// A malformed words file ([`super::parse_words`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WordsError {
    /// A token is not a hex word.
    BadWord {
        /// The line (from 1).
        line: usize,
        /// The token, quoted and cut to a short prefix.
        token: String,
        /// Why it does not parse.
        source: std::num::ParseIntError,
    },
    /// More words than a case may have.
    TooMany {
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for WordsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WordsError::BadWord {
                line,
                token,
                source,
            } => write!(f, "line {line}: {token}: {source}"),
            WordsError::TooMany { limit } => write!(f, "more than {limit} words"),
        }
    }
}

impl std::error::Error for WordsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WordsError::BadWord { source, .. } => Some(source),
            WordsError::TooMany { .. } => None,
        }
    }
}

/// A corpus file that cannot be used ([`super::load_corpus`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum CorpusError {
    /// It cannot be read.
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a words file.
    Words {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        source: WordsError,
    },
}

impl fmt::Display for CorpusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorpusError::Read { file, source } => write!(f, "{}: {source}", file.display()),
            CorpusError::Words { file, source } => write!(f, "{}: {source}", file.display()),
        }
    }
}

impl std::error::Error for CorpusError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CorpusError::Read { source, .. } => Some(source),
            CorpusError::Words { source, .. } => Some(source),
        }
    }
}

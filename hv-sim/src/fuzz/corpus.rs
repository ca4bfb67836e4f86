//! Cases as words files, and the corpus on disk.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::Target;
use super::error::{CorpusError, WordsError};

/// The most words a case may have.
const MAX_WORDS: usize = 65_536;

/// Render a case as a words file: `#` comment lines, then the words in hex.
pub fn words_file(target: Target, words: &[u64], comment: &str) -> String {
    let mut s = format!("# hv-sim fuzz case, target {}\n", target.name());
    for line in comment.lines() {
        let _ = writeln!(s, "# {line}");
    }
    for chunk in words.chunks(4) {
        let line: Vec<String> = chunk.iter().map(|w| format!("{w:#018x}")).collect();
        let _ = writeln!(s, "{}", line.join(" "));
    }
    s
}

/// Parse a words file (see [`words_file`]): hex words separated by
/// whitespace; `#` starts a comment. At most 65,536 words.
pub fn parse_words(text: &str) -> Result<Vec<u64>, WordsError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for tok in line.split_whitespace() {
            let digits = tok
                .strip_prefix("0x")
                .or_else(|| tok.strip_prefix("0X"))
                .unwrap_or(tok);
            let w = u64::from_str_radix(digits, 16).map_err(|source| WordsError::BadWord {
                line: n + 1,
                token: crate::explain::quote_prefix(tok),
                source,
            })?;
            out.push(w);
            if out.len() > MAX_WORDS {
                return Err(WordsError::TooMany { limit: MAX_WORDS });
            }
        }
    }
    Ok(out)
}

/// The corpus kept in the repository.
pub fn default_corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus")
}

/// The corpus entries of `target` under `dir` (sorted by file name; a
/// missing directory is an empty corpus).
pub fn load_corpus(dir: &Path, target: Target) -> Result<Vec<(String, Vec<u64>)>, CorpusError> {
    let d = dir.join(target.name());
    let Ok(rd) = std::fs::read_dir(&d) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "words"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(source) => return Err(CorpusError::Read { file: f, source }),
        };
        let w = match parse_words(&text) {
            Ok(w) => w,
            Err(source) => return Err(CorpusError::Words { file: f, source }),
        };
        out.push((f.display().to_string(), w));
    }
    Ok(out)
}

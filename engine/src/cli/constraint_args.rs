//! The structured-output flags of `generate` and `bench`: at most one grammar per run.

use std::path::PathBuf;

use crate::constrain::{Constraint, Grammar};
use crate::error::Result;

#[derive(clap::Args, Clone, Debug, Default)]
#[group(id = "constraint", multiple = false)]
pub struct ConstraintArgs {
    /// Constrain the output to the JSON schema in FILE (it always parses and validates).
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<PathBuf>,
    /// Constrain the output to a JSON object (any keys and values).
    #[arg(long)]
    pub json_object: bool,
    /// Constrain the output to the grammar in FILE, in llguidance's Lark syntax (it may
    /// embed `%json {schema}`).
    #[arg(long, value_name = "FILE.lark")]
    pub grammar: Option<PathBuf>,
    /// Constrain the whole output to match this regular expression (Rust regex syntax).
    #[arg(long, value_name = "RE")]
    pub regex: Option<String>,
}

impl ConstraintArgs {
    /// The grammar the flags ask for, its file read and (for JSON) parsed; errors name the
    /// flag and the file. Compiling it needs the tokenizer, so that fails later, with the same
    /// names.
    pub fn constraint(&self) -> Result<Option<Constraint>> {
        let flag = |name: &str, path: &std::path::Path| format!("{name} {}", path.display());
        Ok(match (&self.json_schema, self.json_object, &self.grammar, &self.regex) {
            (Some(path), ..) => Some(Constraint::json_schema_file(path, &flag("--json-schema", path))?),
            (_, true, ..) => Some(Constraint::new(Grammar::JsonObject, "--json-object")),
            (_, _, Some(path), _) => Some(Constraint::lark_file(path, &flag("--grammar", path))?),
            (_, _, _, Some(rx)) => Some(Constraint::new(Grammar::Regex(rx.clone()), "--regex")),
            _ => None,
        })
    }
}

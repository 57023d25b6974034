//! Where the workspace and its target directory are, as cargo sees them (`CARGO_TARGET_DIR`
//! and `build.target-dir` included).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow};

use crate::cmd;

pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
}

impl Workspace {
    pub fn load() -> anyhow::Result<Self> {
        // xtask lives one level below the workspace root; ask about that manifest so the
        // answer does not depend on the directory `cargo xtask` was run from.
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let json = cmd::output(
            Command::new("cargo")
                .args([
                    "metadata",
                    "--no-deps",
                    "--format-version",
                    "1",
                    "--manifest-path",
                ])
                .arg(&manifest),
        )?;
        let meta: serde_json::Value =
            serde_json::from_str(&json).context("parsing `cargo metadata` output")?;
        let path = |key: &str| {
            meta.get(key)
                .and_then(serde_json::Value::as_str)
                .map(PathBuf::from)
                .ok_or_else(|| anyhow!("`cargo metadata` output has no `{key}`"))
        };
        Ok(Self {
            root: path("workspace_root")?,
            target_dir: path("target_directory")?,
        })
    }
}

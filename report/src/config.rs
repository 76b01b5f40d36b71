//! Where the archive is, for a report: the archive section of the origin's configuration,
//! read from the origin's own TOML file (its `[archive]` table) or from a JSON file
//! holding just that section, so an analyst's machine needs no server configuration.

use std::path::Path;

use allot_archive::ArchiveConfig;

use crate::ReportError;

/// The archive configuration in `path`: a `.json` file is an [`ArchiveConfig`]; anything
/// else is read as the origin's TOML and its `[archive]` table is taken.
pub fn load(path: &Path) -> Result<ArchiveConfig, ReportError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ReportError::Config(format!("reading {}: {e}", path.display())))?;
    if path.extension().is_some_and(|e| e == "json") {
        return Ok(ArchiveConfig::from_json(&text)?);
    }
    from_toml(&text).map_err(|e| ReportError::Config(format!("{}: {e}", path.display())))
}

fn from_toml(text: &str) -> Result<ArchiveConfig, String> {
    #[derive(serde::Deserialize)]
    struct File {
        archive: Option<ArchiveConfig>,
    }
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let archive = file.archive.ok_or("no [archive] section")?;
    archive.check().map_err(|e| e.to_string())?;
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_archive_table_of_the_origins_toml() {
        let cfg = from_toml("listen = \"127.0.0.1:0\"\n[archive]\nbucket = \"b\"\nprefix = \"p/\"\n").unwrap();
        assert_eq!((cfg.bucket.as_str(), cfg.prefix.as_str()), ("b", "p/"));
        assert!(from_toml("listen = \"x\"\n").unwrap_err().contains("no [archive]"));
        assert!(from_toml("[archive]\nbucket = \"b\"\nnope = 1\n").unwrap_err().contains("nope"));
    }
}

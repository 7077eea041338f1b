//! The metric families docs/operations.md documents, read from its
//! metrics table, and the families a `/metrics` scrape exports, so a test
//! can hold the two against each other.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// docs/operations.md of this repository.
pub fn operations_doc() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Family name (as in `# TYPE`, counters without `_total`) → type, from
/// every row of the tables under `## Metrics` whose header starts with
/// `| series | type |`. A row naming two series (`a_received_total` /
/// `_sent_total`) gives both: the second replaces the first's last word.
pub fn documented_families(doc: &str) -> BTreeMap<String, String> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Metrics\n"))
        .expect("docs/operations.md has a `## Metrics` section");
    let mut families = BTreeMap::new();
    let mut in_table = false;
    for line in section.lines() {
        if line.starts_with("| series | type |") {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (series, kind) = (cells[1], cells[2]);
        let names: Vec<&str> = series
            .split('/')
            .map(|n| n.trim().trim_matches('`'))
            .collect();
        let first = names[0];
        assert!(
            first.starts_with("gangway_") || first.starts_with("process_"),
            "unexpected series cell in the metrics table: {line}"
        );
        let mut all = vec![first.to_string()];
        for alt in &names[1..] {
            let stem = first.strip_suffix("_total").unwrap_or(first);
            let stem = &stem[..stem.rfind('_').expect("a word to replace")];
            all.push(format!("{stem}{alt}"));
        }
        for name in all {
            let family = match kind {
                "counter" => name
                    .strip_suffix("_total")
                    .unwrap_or_else(|| panic!("counter {name} must end in _total"))
                    .to_string(),
                _ => name,
            };
            families.insert(family, kind.to_string());
        }
    }
    assert!(
        families.len() > 20,
        "the metrics table was found: {families:?}"
    );
    families
}

/// Family name → type, from the `# TYPE` lines of an OpenMetrics scrape,
/// for the families with at least one sample: an empty family still gets
/// its `# TYPE` line, but a dashboard finds nothing in it.
pub fn exported_families(scrape: &str) -> BTreeMap<String, String> {
    let samples: std::collections::BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let has_samples = |family: &str| {
        [
            "", "_total", "_bucket", "_count", "_sum", "_created", "_info",
        ]
        .iter()
        .any(|suffix| samples.contains(format!("{family}{suffix}").as_str()))
    };
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_string(), kind.to_string()))
        })
        .filter(|(name, _)| has_samples(name))
        .collect()
}

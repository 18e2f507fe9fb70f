//! The generated regions of `docs/benchmarks.md`: `lb-bench-report` (which
//! has serde_json) renders the tables from `target/bench/*.json`, each
//! between `<!-- bench:NAME begin -->` and `<!-- bench:NAME end -->`; this
//! module only replaces the document's region of the same name with it,
//! so xtask needs no JSON parser (it stays std + anyhow) and the prose
//! around the tables stays as written.
use anyhow::{Result, bail};

/// `doc` with each region of `generated` in place of the region of the same
/// name, and the names replaced. A generated region the document lacks is
/// an error (its table would be lost silently); the document's regions
/// that nothing generated stay as they are.
pub fn splice(doc: &str, generated: &str) -> Result<(String, Vec<String>)> {
    let mut doc = doc.to_owned();
    let mut names = Vec::new();
    for (name, region) in regions(generated)? {
        let Some((start, end)) = find(&doc, &name)? else {
            bail!("docs/benchmarks.md has no region `{name}` ({})", begin(&name));
        };
        doc.replace_range(start..end, region);
        names.push(name);
    }
    Ok((doc, names))
}

fn begin(name: &str) -> String {
    format!("<!-- bench:{name} begin -->")
}

fn end(name: &str) -> String {
    format!("<!-- bench:{name} end -->")
}

/// The regions of `text` in order: each name and its text from the start
/// of its begin line to the end of its end line (newline included).
fn regions(text: &str) -> Result<Vec<(String, &str)>> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(at) = rest.find("<!-- bench:") {
        let line = &rest[at..rest[at..].find('\n').map_or(rest.len(), |n| at + n)];
        let Some(name) =
            line.strip_prefix("<!-- bench:").and_then(|l| l.strip_suffix(" begin -->"))
        else {
            bail!("not a region's begin marker: {line}");
        };
        let Some((start, stop)) = find(&text[offset..], name)? else {
            bail!("region `{name}` has no {}", end(name));
        };
        out.push((name.to_owned(), &text[offset + start..offset + stop]));
        offset += stop;
        rest = &text[offset..];
    }
    Ok(out)
}

/// Where region `name` of `text` starts (its begin marker's line) and ends
/// (after its end marker's line), if it is there.
fn find(text: &str, name: &str) -> Result<Option<(usize, usize)>> {
    let Some(start) = text.find(&begin(name)) else {
        return Ok(None);
    };
    let Some(stop) = text[start..].find(&end(name)).map(|n| start + n + end(name).len()) else {
        bail!("region `{name}` has no {}", end(name));
    };
    let stop = if text[stop..].starts_with('\n') { stop + 1 } else { stop };
    Ok(Some((start, stop)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Benchmarks\n\nProse.\n\n<!-- bench:a begin -->\nold a\n<!-- bench:a end -->\n\nMore prose.\n\n<!-- bench:b begin -->\nold b\n<!-- bench:b end -->\n";

    #[test]
    fn the_generated_regions_replace_their_namesakes_and_nothing_else() {
        let generated = "<!-- bench:b begin -->\nnew b\n| x |\n<!-- bench:b end -->\n";
        let (doc, names) = splice(DOC, generated).unwrap();
        assert_eq!(names, ["b"]);
        assert_eq!(doc, DOC.replace("old b", "new b\n| x |"));
        let (again, _) = splice(&doc, generated).unwrap();
        assert_eq!(again, doc, "splicing twice changes nothing more");
    }

    #[test]
    fn a_region_the_document_lacks_or_a_broken_one_is_an_error() {
        let lacking = "<!-- bench:c begin -->\nc\n<!-- bench:c end -->\n";
        assert!(splice(DOC, lacking).unwrap_err().to_string().contains("no region `c`"));
        assert!(splice(DOC, "<!-- bench:a begin -->\nno end\n").is_err());
        assert!(
            splice("<!-- bench:a begin -->\n", "<!-- bench:a begin -->\n<!-- bench:a end -->\n")
                .is_err()
        );
    }
}
